//! An ensemble's members in one batched forward pass: what a decision of an ensemble costs
//! at batch 1 is then close to one network's, not one network's times the members.
//!
//! At batch 1 a forward pass is dominated by libtorch's per-operation cost (dispatch,
//! allocation, the host↔tensor copies), not by arithmetic: a 128×128 torso is about 20 k
//! multiply-adds. Running M members one after the other pays that cost M times. Here the
//! members' weights are stacked once, at load time, along a leading member dimension, and
//! every layer of all members is one `baddbmm` (bias + input · weightᵀ, batched over
//! members): one operation per layer whatever M is. Each member keeps its own input (its
//! own normaliser's statistics), which a batched product over members allows and a single
//! wide first layer over one shared input would not; block-diagonal weights would do the
//! same with M× the arithmetic and the zeros. The member's branch heads (and the dueling
//! value head) are concatenated into one layer per member, so the heads are one operation
//! too; the dueling combination, V + A − mean A per branch, is a handful of floats and is
//! done on the host.
//!
//! **The same computation.** Each member's product is the same product its own
//! [`QNetwork::forward`](super::dqn::QNetwork::forward) takes: `linear` on a batch of one
//! row is `addmm(bias, x, Wᵀ)`, and a batched `baddbmm(bias, x, Wᵀ)` runs one matrix
//! product of the same shapes (and the same transposed weight layout) per member; ReLU
//! is elementwise. Only the order in which the BLAS sums a dot product, and the order of
//! the dueling mean's sum, may differ, which is a few units in the last place of an
//! output. `tests/rl_fused.rs` compares both paths on the shipped ensemble.
//!
//! **When it applies.** Members must have the same architecture: the same number of
//! inputs, hidden widths, dueling heads, action branches and device
//! ([`FusedEnsemble::new`] says which differs otherwise); the caller then runs each
//! member's own forward pass ([`crate::rl::policy::DqnPolicy`] does). Members may differ
//! in whether and how they normalise their inputs: that is done per member on the host,
//! exactly as [`DqnAgent::normalised`] does it.

use tch::{Device, TchError, Tensor};

use super::dqn::DqnAgent;
use super::encoding::Normaliser;

/// Why an ensemble's members cannot be run as one batched forward pass.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// There are no members.
    #[error("an ensemble without members cannot be fused")]
    Empty,
    /// A member's network differs from the first member's.
    #[error("member {member} cannot be fused with member 0: its {what}")]
    Architecture {
        /// The member (0-based, in the ensemble's order).
        member: usize,
        /// What differs, with both values.
        what: String,
    },
    /// A member's weights lack a tensor its network needs.
    #[error("member {member} has no tensor `{name}`")]
    MissingTensor {
        /// The member (0-based).
        member: usize,
        /// The variable name (`torso0.weight`, …).
        name: String,
    },
    /// An observation of the wrong length was given.
    #[error("an observation of {got} features, the members take {expected}")]
    Input {
        /// Features the members take.
        expected: usize,
        /// Features given.
        got: usize,
    },
    /// libtorch refused an operation (stacking the weights, or the forward pass).
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

/// The members of an ensemble with their weights stacked, computed in one batched
/// forward pass ([`FusedEnsemble::outputs`]); see the module docs.
pub struct FusedEnsemble {
    /// Torso layers: weights `[M, in, out]` (a transposed view of the stacked `[M, out, in]`,
    /// the layout `linear` hands to the BLAS) and biases `[M, 1, out]`.
    torso: Vec<(Tensor, Tensor)>,
    /// Every member's branch heads, then its value head with `dueling`, as one layer:
    /// weights `[M, hidden, K]` and biases `[M, 1, K]`.
    heads: (Tensor, Tensor),
    dueling: bool,
    sizes: Vec<usize>,
    obs_dim: usize,
    device: Device,
    /// Each member's input normalisation (`None`: the member takes raw features).
    normalisers: Vec<Option<Normaliser>>,
}

impl std::fmt::Debug for FusedEnsemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedEnsemble")
            .field("members", &self.normalisers.len())
            .field("obs_dim", &self.obs_dim)
            .field("sizes", &self.sizes)
            .field("dueling", &self.dueling)
            .finish()
    }
}

/// The first difference between two members' architectures, if any.
fn architecture_difference(a: &DqnAgent, b: &DqnAgent) -> Option<String> {
    if a.obs_dim() != b.obs_dim() {
        return Some(format!("number of inputs ({} vs {})", b.obs_dim(), a.obs_dim()));
    }
    if a.cfg.hidden != b.cfg.hidden {
        return Some(format!("hidden widths ({:?} vs {:?})", b.cfg.hidden, a.cfg.hidden));
    }
    if a.cfg.dueling != b.cfg.dueling {
        return Some(format!("dueling heads ({} vs {})", b.cfg.dueling, a.cfg.dueling));
    }
    if a.branch_sizes() != b.branch_sizes() {
        return Some(format!("action branches ({:?} vs {:?})", b.branch_sizes(), a.branch_sizes()));
    }
    if a.device != b.device {
        return Some(format!("device ({:?} vs {:?})", b.device, a.device));
    }
    None
}

/// One member's weights by name, detached from autograd.
struct Weights {
    member: usize,
    vars: std::collections::HashMap<String, Tensor>,
}

impl Weights {
    fn of(member: usize, agent: &DqnAgent) -> Self {
        Weights { member, vars: agent.vs.variables() }
    }

    fn get(&self, name: &str) -> Result<Tensor, FuseError> {
        self.vars
            .get(name)
            .map(Tensor::detach)
            .ok_or_else(|| FuseError::MissingTensor { member: self.member, name: name.to_string() })
    }

    /// The weight and bias of the linear layer `layer`.
    fn linear(&self, layer: &str) -> Result<(Tensor, Tensor), FuseError> {
        Ok((self.get(&format!("{layer}.weight"))?, self.get(&format!("{layer}.bias"))?))
    }
}

/// Stacks the members' `(weight [out, in], bias [out])` into `(weight [M, in, out],
/// bias [M, 1, out])` for `baddbmm`.
fn stack(layers: Vec<(Tensor, Tensor)>) -> Result<(Tensor, Tensor), FuseError> {
    let (ws, bs): (Vec<Tensor>, Vec<Tensor>) = layers.into_iter().unzip();
    let w = Tensor::f_stack(&ws, 0)?.f_transpose(1, 2)?;
    let b = Tensor::f_stack(&bs, 0)?.f_unsqueeze(1)?;
    Ok((w, b))
}

impl FusedEnsemble {
    /// Stacks the weights of `agents` for one batched forward pass. An error when there
    /// are no members, when a member's architecture differs from the first's (inputs,
    /// hidden widths, dueling, branches, device; the error names it), or when a member's
    /// weights lack a tensor: the caller then runs each member's own forward pass.
    pub fn new(agents: &[DqnAgent]) -> Result<FusedEnsemble, FuseError> {
        let first = agents.first().ok_or(FuseError::Empty)?;
        if let Some((member, what)) =
            agents.iter().enumerate().skip(1).find_map(|(i, a)| architecture_difference(first, a).map(|w| (i, w)))
        {
            return Err(FuseError::Architecture { member, what });
        }
        let weights: Vec<Weights> = agents.iter().enumerate().map(|(i, a)| Weights::of(i, a)).collect();
        let torso = (0..first.cfg.hidden.len())
            .map(|l| stack(weights.iter().map(|w| w.linear(&format!("torso{l}"))).collect::<Result<_, _>>()?))
            .collect::<Result<Vec<_>, _>>()?;
        let sizes = first.branch_sizes().to_vec();
        let dueling = first.cfg.dueling;
        let heads = weights
            .iter()
            .map(|w| -> Result<(Tensor, Tensor), FuseError> {
                let mut layers: Vec<String> = (0..sizes.len()).map(|d| format!("head{d}")).collect();
                if dueling {
                    layers.push("value".into());
                }
                let parts = layers.iter().map(|l| w.linear(l)).collect::<Result<Vec<_>, _>>()?;
                let (ws, bs): (Vec<Tensor>, Vec<Tensor>) = parts.into_iter().unzip();
                Ok((Tensor::f_cat(&ws, 0)?, Tensor::f_cat(&bs, 0)?))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let heads = stack(heads)?;
        let normalisers = agents.iter().map(|a| a.cfg.normalise_obs.then(|| a.normaliser.clone())).collect::<Vec<_>>();
        Ok(FusedEnsemble { torso, heads, dueling, sizes, obs_dim: first.obs_dim(), device: first.device, normalisers })
    }

    /// Number of members.
    pub fn members(&self) -> usize {
        self.normalisers.len()
    }

    /// Options per branch (the members' outputs are these, flattened).
    pub fn branch_sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// Every member's outputs for one raw observation, flattened over branches, in the
    /// members' order: what [`DqnAgent::q_values`] gives for each member (Q-values of a
    /// DQN, logits of a PPO actor), up to the summation order (see the module docs).
    pub fn outputs(&self, raw_obs: &[f32]) -> Result<Vec<Vec<f32>>, FuseError> {
        if raw_obs.len() != self.obs_dim {
            return Err(FuseError::Input { expected: self.obs_dim, got: raw_obs.len() });
        }
        let m = self.members();
        let mut x = Vec::with_capacity(m * self.obs_dim);
        for n in &self.normalisers {
            let start = x.len();
            x.extend_from_slice(raw_obs);
            if let Some(n) = n {
                n.apply(&mut x[start..]);
            }
        }
        let flat = tch::no_grad(|| self.forward(&x))?;
        let total: usize = self.sizes.iter().sum();
        let width = total + usize::from(self.dueling);
        if flat.len() != m * width {
            return Err(FuseError::Input { expected: m * width, got: flat.len() });
        }
        Ok(flat.chunks(width).map(|row| self.combine(row, total)).collect())
    }

    /// The batched forward pass on `x` (`[M, obs_dim]` flattened): every member's raw
    /// head outputs, `[M, K]` flattened.
    fn forward(&self, x: &[f32]) -> Result<Vec<f32>, TchError> {
        let m = self.members() as i64;
        let mut h = Tensor::f_from_slice(x)?.f_view([m, 1, self.obs_dim as i64])?;
        if self.device != Device::Cpu {
            h = h.f_to_device(self.device)?;
        }
        for (w, b) in &self.torso {
            let mut y = b.f_baddbmm(&h, w, 1.0, 1.0)?;
            let _ = y.f_relu_()?;
            h = y;
        }
        let (w, b) = &self.heads;
        let mut out = b.f_baddbmm(&h, w, 1.0, 1.0)?;
        if self.device != Device::Cpu {
            out = out.f_to_device(Device::Cpu)?;
        }
        Vec::<f32>::try_from(&out.f_view([-1])?)
    }

    /// One member's outputs from its raw head outputs `row` (branch heads, then the value
    /// with `dueling`): the advantages as they are, or V + A − mean A per branch, as
    /// [`QNetwork::forward`](super::dqn::QNetwork::forward) computes them.
    fn combine(&self, row: &[f32], total: usize) -> Vec<f32> {
        let heads = &row[..total];
        if !self.dueling {
            return heads.to_vec();
        }
        let v = row[total];
        let mut q = Vec::with_capacity(total);
        let mut off = 0;
        for &n in &self.sizes {
            let a = &heads[off..off + n];
            let mean = a.iter().sum::<f32>() / n as f32;
            q.extend(a.iter().map(|&aj| v + aj - mean));
            off += n;
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::dqn::{DeviceChoice, DqnConfig};

    fn agent(seed: u64, hidden: Vec<i64>, dueling: bool, sizes: &[usize]) -> DqnAgent {
        let cfg = DqnConfig { hidden, dueling, seed, device: DeviceChoice::Cpu, ..Default::default() };
        let mut a = DqnAgent::new(5, sizes, cfg).unwrap();
        // Statistics that differ per member, so each member's input differs.
        for i in 0..20 {
            let v = (i as f32 + seed as f32) * 0.37;
            a.normaliser.update(&[v, -v, v * v, 1.0, (v * 3.0).sin()]);
        }
        a
    }

    #[test]
    fn fused_outputs_are_each_members_own() {
        for dueling in [false, true] {
            let agents: Vec<DqnAgent> = (0..3).map(|s| agent(s, vec![16, 8], dueling, &[3, 4])).collect();
            let fused = FusedEnsemble::new(&agents).unwrap();
            assert_eq!(fused.members(), 3);
            for k in 0..50 {
                let x: Vec<f32> = (0..5).map(|i| ((k * 7 + i * 3) as f32 * 0.61).sin() * 4.0).collect();
                let out = fused.outputs(&x).unwrap();
                for (m, a) in agents.iter().enumerate() {
                    let own = a.q_values(&x);
                    assert_eq!(out[m].len(), own.len());
                    for (f, o) in out[m].iter().zip(&own) {
                        assert!((f - o).abs() <= 1e-5 * o.abs().max(1.0), "dueling {dueling}, member {m}: {f} vs {o}");
                    }
                }
            }
        }
    }

    #[test]
    fn different_architectures_are_not_fused() {
        let a = agent(0, vec![16, 8], true, &[3]);
        let b = agent(1, vec![16, 16], true, &[3]);
        let e = FusedEnsemble::new(&[a, b]).unwrap_err().to_string();
        assert!(e.contains("member 1") && e.contains("hidden widths"), "{e}");
        let a = agent(0, vec![8], true, &[3]);
        let b = agent(1, vec![8], false, &[3]);
        let e = FusedEnsemble::new(&[a, b]).unwrap_err().to_string();
        assert!(e.contains("dueling"), "{e}");
        assert!(matches!(FusedEnsemble::new(&[]), Err(FuseError::Empty)));
        let fused = FusedEnsemble::new(&[agent(0, vec![8], true, &[3])]).unwrap();
        let e = fused.outputs(&[1.0, 2.0]).unwrap_err().to_string();
        assert!(e.contains("2 features") && e.contains("take 5"), "{e}");
    }
}
