//! The policy registry: every policy kind declares itself once, and the spec, the command
//! line and the reports find it here.
//!
//! A kind is a type implementing [`PolicyKindDef`] in its own file (`src/policy/hpa.rs`,
//! ...): its id and command-line name, its keys, its parameter type (the spec's block, or
//! what its keys set), how the parameters are read from and written to a spec's `policy`
//! section, how they are checked, and how the policy is built, from a spec or from a
//! command-line name with the harness's [`BuildContext`]. A learned kind also says how its
//! checkpoint loads. Every [`PolicyKindDef`] is a [`PolicyEntry`], the object-safe form a
//! [`Registry`] lists.
//!
//! The kinds of this module are listed once, in `KINDS` in `src/policy/mod.rs`
//! ([`Registry::builtin`]); modules above `policy` add theirs (the DQN, in `src/rl/`:
//! `llmos::rl::registry()`), so `policy` never names them.
//!
//! # Command-line names
//! `KIND[:ARG][:KEY=VALUE]...`, e.g. `hpa`, `hpa:target=8:window=60`, `static:4`,
//! `static-peak`, `clairvoyant:capacity=1.3`, `dqn:PATH`. Every kind also takes
//! `placement=cheapest|spread` and `variants=fixed|qualityFirst|costFirst`. An unknown name
//! or key, or a bad value, is an error that lists what is valid ([`Registry::usage`]).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::crd::LLMWorkloadSpec;
use crate::policy::config::{PlacementKind, PolicyKind, PolicySpec, VariantSelection};
use crate::policy::placement::{Placement, WorkloadInfo};
use crate::policy::Policy;

/// Errors building a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A kind of the spec that no entry of the registry in use provides.
    #[error("policy kind `{kind}` is not in this registry: it is provided by a module above `policy` (`dqn`: the rl module, which was not linked into this build path; build it with `llmos::rl::registry()`)")]
    NotRegistered {
        /// The kind's name.
        kind: String,
    },
    /// A required parameter block or field is absent.
    #[error("missing `{field}`: {message}")]
    Missing {
        /// Field path.
        field: String,
        /// What to add.
        message: String,
    },
    /// A parameter has a bad value.
    #[error("bad value for `{field}`: {message}")]
    InvalidParam {
        /// Field path (spec field or command-line key).
        field: String,
        /// What is wrong and what is valid.
        message: String,
    },
    /// An unknown policy name on the command line.
    #[error("unknown policy `{name}`; valid policies: {valid}")]
    UnknownName {
        /// The name given.
        name: String,
        /// The valid names, with their keys.
        valid: String,
    },
    /// What the harness knows about a run could not be read (the scenario's cold starts,
    /// its arrival stream).
    #[error("reading the run's {what}: {source}")]
    Run {
        /// What was being read.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Loading a learned policy failed.
    #[error("loading policy from `{path}`: {message}")]
    Load {
        /// Checkpoint path.
        path: String,
        /// Why.
        message: String,
    },
    /// A saved policy state could not be put back (it does not parse, or it was saved by
    /// another kind of policy).
    #[error("policy state of `{policy}` rejected: {message}")]
    State {
        /// The policy kind that was given the state.
        policy: String,
        /// What is wrong, naming the field where one is known.
        message: String,
    },
}

/// A [`PolicyError::InvalidParam`] for `field`.
pub fn invalid(field: &str, message: impl Into<String>) -> PolicyError {
    PolicyError::InvalidParam { field: field.into(), message: message.into() }
}

/// `x` must be a positive finite number (else an error naming `field`).
pub fn check_pos(field: &str, x: f64) -> Result<(), PolicyError> {
    if x > 0.0 && x.is_finite() {
        Ok(())
    } else {
        Err(invalid(field, format!("{x} must be a positive number")))
    }
}

/// Parses a command-line value `v` of `key`; the error says it is not `what`.
pub fn num<T: std::str::FromStr>(key: &str, v: &str, what: &str) -> Result<T, PolicyError> {
    v.parse().map_err(|_| invalid(key, format!("`{v}` is not {what}")))
}

/// The identity of a policy kind: its command-line name. Reports carry it, so that
/// tables and verdicts tell kinds apart without reading labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KindId(pub &'static str);

impl KindId {
    /// The kind's command-line name.
    pub fn name(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for KindId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for KindId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// Arrival statistics of a window, used to size static fleets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ArrivalStats {
    /// Mean arrival rate, requests per second.
    pub mean_rps: f64,
    /// Peak arrival rate over 60 s bins, requests per second.
    pub peak_rps: f64,
}

/// Arrival times of a run, seconds from the window's start, in order.
pub type ArrivalTimes = Box<dyn Iterator<Item = f64> + Send>;

/// Builds a run's [`ArrivalTimes`] again from the start (`None` when it cannot).
pub type ArrivalTimesSource = Box<dyn Fn() -> Option<ArrivalTimes> + Send>;

/// The twin run a policy is built for, as the harness knows it (implemented by the
/// comparison harness, `eval::EpisodeContext`): what a kind that reads the run's own
/// traffic (the clairvoyant reference) needs.
pub trait EpisodeRun: Sync {
    /// The largest cold start of the workload's variants, seconds.
    fn cold_start_s(&self) -> Result<f64, PolicyError>;
    /// A source of the run's arrival times, exactly as the twin will see them.
    fn arrival_times(&self) -> Result<ArrivalTimesSource, PolicyError>;
}

/// What building a policy may use: the workload (its `policy` section is the chosen
/// kind's), the label, and what the comparison harness knows about the run.
#[derive(Clone, Copy)]
pub struct BuildContext<'a> {
    /// The workload spec; its `policy` section holds placement, variant selection, interval
    /// (and, for kinds of the spec, the kind's block).
    pub spec: &'a LLMWorkloadSpec,
    /// The label shown in reports (the command-line name, or the kind's name).
    pub label: &'a str,
    /// Arrival statistics of the run's window and load (`None` outside the harness).
    pub arrivals: Option<ArrivalStats>,
    /// Requests per second one replica sustains (`--replica-capacity-rps`).
    pub replica_capacity_rps: Option<f64>,
    /// The run (`None` outside the harness).
    pub episode: Option<&'a dyn EpisodeRun>,
}

impl<'a> BuildContext<'a> {
    /// The context of a spec alone (the operator, or a name built without the harness).
    pub fn of_spec(spec: &'a LLMWorkloadSpec, label: &'a str) -> Self {
        BuildContext { spec, label, arrivals: None, replica_capacity_rps: None, episode: None }
    }

    /// The workload's scaling units, from the spec.
    pub fn info(&self) -> WorkloadInfo {
        WorkloadInfo::from_spec(self.spec)
    }

    /// Placement and variant selection of the spec's `policy` section.
    pub fn placement(&self) -> Placement {
        Placement::new(self.spec.policy.placement, self.spec.policy.variant_selection)
    }

    /// The error of a kind built without the comparison harness.
    pub fn needs_harness(&self) -> PolicyError {
        invalid(self.label, "needs the harness to be built (trace statistics, the run's arrivals or a DQN loader)")
    }
}

/// How a kind's first command-line argument may be given without `KEY=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positional {
    /// Every argument is `KEY=VALUE`.
    None,
    /// The first argument may be a bare value of this key (`static:4`).
    First(&'static str),
    /// Everything after `KIND:` is the value of this key (`dqn:PATH`, paths may hold `:`).
    Rest(&'static str),
}

/// The keys every kind takes on the command line.
pub const COMMON_KEYS: &str = "placement=cheapest|spread, variants=fixed|qualityFirst|costFirst";

/// One policy kind, declared in its own file (see the module docs).
pub trait PolicyKindDef: Send + Sync + 'static {
    /// The kind's parameters: its block of the spec's `policy` section, or what its
    /// command-line keys set.
    type Params: Clone + Default + fmt::Debug + Send + Sync + 'static;
    /// The kind's id, which is also its command-line name.
    const ID: KindId;
    /// The line of [`Registry::usage`], e.g. `ray[:target=F][:up-delay=S][:down-delay=S]`.
    const USAGE: &'static str;
    /// The keys, as listed in errors, e.g. `target, up-delay, down-delay`.
    const KEYS: &'static str;
    /// The `spec.policy.kind` that selects it (`None`: command line only).
    const SPEC_KIND: Option<PolicyKind> = None;
    /// A first argument without `KEY=`.
    const POSITIONAL: Positional = Positional::None;
    /// Only the comparison harness can build it (it needs trace statistics or the run).
    const NEEDS_HARNESS: bool = false;
    /// It is learned: built from a trained checkpoint ([`PolicyKindDef::load_checkpoint`]).
    const LEARNED: bool = false;

    /// The parameters a command-line name starts from (the parameter type's default).
    fn defaults(&self) -> Self::Params {
        Self::Params::default()
    }
    /// The parameters in a spec's `policy` section (kinds of the spec; the defaults when
    /// the block is absent).
    fn from_section(&self, _p: &PolicySpec) -> Result<Self::Params, PolicyError> {
        Ok(self.defaults())
    }
    /// Writes the parameters into a `policy` section (kinds of the spec).
    fn to_section(&self, _params: &Self::Params, _p: &mut PolicySpec) {}
    /// Sets command-line key `key` to `value`; `field` names it in errors (`kind:key`).
    /// `Ok(false)`: not a key of this kind.
    fn set(&self, params: &mut Self::Params, key: &str, value: &str, field: &str) -> Result<bool, PolicyError>;
    /// Checks values the schema's ranges cannot express; errors name spec fields.
    fn validate(&self, _params: &Self::Params) -> Result<(), PolicyError> {
        Ok(())
    }
    /// Builds the policy.
    fn build(&self, params: &Self::Params, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError>;
    /// For learned kinds: loads the trained checkpoint in `dir` for the workload `spec`.
    fn load_checkpoint(&self, dir: &str, _spec: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError> {
        Err(PolicyError::Load { path: dir.into(), message: format!("`{}` is not a learned kind", Self::ID) })
    }
}

/// The object-safe form of a [`PolicyKindDef`] that a [`Registry`] lists (every
/// [`PolicyKindDef`] is one).
pub trait PolicyEntry: Send + Sync {
    /// The kind's id (its command-line name).
    fn id(&self) -> KindId;
    /// The line of [`Registry::usage`].
    fn usage(&self) -> &'static str;
    /// The keys, as listed in errors.
    fn keys(&self) -> &'static str;
    /// The `spec.policy.kind` that selects it.
    fn spec_kind(&self) -> Option<PolicyKind>;
    /// Only the comparison harness can build it.
    fn needs_harness(&self) -> bool;
    /// It is learned (built from a checkpoint).
    fn learned(&self) -> bool;
    /// Checks the kind's block of a `policy` section.
    fn validate_section(&self, p: &PolicySpec) -> Result<(), PolicyError>;
    /// Builds the policy a spec selects (its `policy.kind` is this kind).
    fn from_spec(&self, spec: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError>;
    /// Parses the arguments of command-line name `name` (`rest`: the text after `KIND:`,
    /// `None` without a `:`) on top of `spec` (placement, variant selection, interval):
    /// the `policy` section and the kind's parameters.
    fn parse_cli(
        &self,
        name: &str,
        rest: Option<&str>,
        spec: PolicySpec,
    ) -> Result<(PolicySpec, Arc<dyn Any + Send + Sync>), PolicyError>;
    /// Builds a parsed command-line choice with what the harness knows (`ctx.spec` is the
    /// scenario's; the choice's `policy` section replaces its own).
    fn from_cli(&self, choice: &PolicyChoice, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError>;
}

impl<K: PolicyKindDef> PolicyEntry for K {
    fn id(&self) -> KindId {
        K::ID
    }
    fn usage(&self) -> &'static str {
        K::USAGE
    }
    fn keys(&self) -> &'static str {
        K::KEYS
    }
    fn spec_kind(&self) -> Option<PolicyKind> {
        K::SPEC_KIND
    }
    fn needs_harness(&self) -> bool {
        K::NEEDS_HARNESS
    }
    fn learned(&self) -> bool {
        K::LEARNED
    }

    fn validate_section(&self, p: &PolicySpec) -> Result<(), PolicyError> {
        self.validate(&self.from_section(p)?)
    }

    fn from_spec(&self, spec: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError> {
        let params = self.from_section(&spec.policy)?;
        self.validate(&params)?;
        self.build(&params, &BuildContext::of_spec(spec, K::ID.name()))
    }

    fn parse_cli(
        &self,
        name: &str,
        rest: Option<&str>,
        mut spec: PolicySpec,
    ) -> Result<(PolicySpec, Arc<dyn Any + Send + Sync>), PolicyError> {
        let kind = K::ID.name();
        let mut params = self.defaults();
        let mut set = |params: &mut K::Params, k: &str, v: &str| -> Result<(), PolicyError> {
            let key = format!("{kind}:{k}");
            match k {
                "placement" => {
                    spec.placement = match v {
                        "cheapest" => PlacementKind::Cheapest,
                        "spread" => PlacementKind::Spread,
                        _ => return Err(invalid(&key, format!("`{v}`; valid: cheapest, spread"))),
                    }
                }
                "variants" => {
                    spec.variant_selection = match v {
                        "fixed" => VariantSelection::Fixed,
                        "qualityFirst" => VariantSelection::QualityFirst,
                        "costFirst" => VariantSelection::CostFirst,
                        _ => return Err(invalid(&key, format!("`{v}`; valid: fixed, qualityFirst, costFirst"))),
                    }
                }
                _ => {
                    if !self.set(params, k, v, &key)? {
                        return Err(invalid(
                            &key,
                            format!("unknown key `{k}`; keys of `{kind}`: {}; also {COMMON_KEYS}", K::KEYS),
                        ));
                    }
                }
            }
            Ok(())
        };
        match (K::POSITIONAL, rest) {
            (_, None) => {}
            (Positional::Rest(key), Some(r)) => {
                if !r.is_empty() {
                    set(&mut params, key, r)?;
                }
            }
            (_, Some(r)) => {
                for (i, item) in r.split(':').enumerate() {
                    let (k, v) = match (item.split_once('='), K::POSITIONAL) {
                        (Some((k, v)), _) => (k.trim(), v.trim()),
                        (None, Positional::First(key)) if i == 0 => (key, item.trim()),
                        (None, _) => {
                            return Err(invalid(
                                name,
                                format!("`{item}` is not KEY=VALUE; keys of `{kind}`: {}; also {COMMON_KEYS}", K::KEYS),
                            ))
                        }
                    };
                    set(&mut params, k, v)?;
                }
            }
        }
        if let Some(k) = K::SPEC_KIND {
            spec.kind = k;
            self.to_section(&params, &mut spec);
        }
        let checked = if spec.interval_seconds == 0 {
            Err(invalid("spec.policy.intervalSeconds", "must be at least 1"))
        } else {
            self.validate(&params)
        };
        checked.map_err(|e| match e {
            PolicyError::InvalidParam { field, message } => invalid(name, format!("{field}: {message}")),
            other => other,
        })?;
        Ok((spec, Arc::new(params)))
    }

    fn from_cli(&self, choice: &PolicyChoice, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        let params = choice
            .params
            .downcast_ref::<K::Params>()
            .ok_or_else(|| invalid(&choice.label, format!("was not parsed as a `{}` policy", K::ID)))?;
        let mut spec = ctx.spec.clone();
        spec.policy = choice.spec.clone();
        self.build(params, &BuildContext { spec: &spec, label: &choice.label, ..*ctx })
    }
}

/// A parsed command-line policy name: the label shown in tables, its kind, and what to build.
#[derive(Clone)]
pub struct PolicyChoice {
    /// The name as given (unique label in reports).
    pub label: String,
    /// The kind.
    pub entry: &'static dyn PolicyEntry,
    /// The `policy` section: placement, variant selection, interval and, for kinds of the
    /// spec, the kind and its block.
    pub spec: PolicySpec,
    /// The kind's parameters (its [`PolicyKindDef::Params`]).
    pub params: Arc<dyn Any + Send + Sync>,
}

impl fmt::Debug for PolicyChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyChoice")
            .field("label", &self.label)
            .field("kind", &self.entry.id())
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl PolicyChoice {
    /// The kind.
    pub fn kind(&self) -> KindId {
        self.entry.id()
    }

    /// The parameters, when the kind's are of type `T`.
    pub fn params<T: 'static>(&self) -> Option<&T> {
        self.params.downcast_ref::<T>()
    }

    /// Builds the policy for `spec` when it needs nothing but the spec (every kind but
    /// `static-peak`, `static-mean` and `clairvoyant`, which need the harness).
    pub fn build_for(&self, spec: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError> {
        if self.entry.needs_harness() {
            return Err(BuildContext::of_spec(spec, &self.label).needs_harness());
        }
        self.entry.from_cli(self, &BuildContext::of_spec(spec, &self.label))
    }

    /// Builds the policy with what the harness knows about the run (`ctx.label` is ignored:
    /// the choice's label is used).
    pub fn build(&self, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        self.entry.from_cli(self, ctx)
    }
}

/// A list of policy kinds: the spec's `policy.kind`, command-line names and reports are
/// resolved through it.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<&'static dyn PolicyEntry>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| e.id())).finish()
    }
}

impl Registry {
    /// A registry of `entries`, in order.
    pub fn new(entries: &[&'static dyn PolicyEntry]) -> Self {
        Registry { entries: entries.to_vec() }
    }

    /// The kinds of the `policy` module (`KINDS` in `src/policy/mod.rs`).
    pub fn builtin() -> &'static Registry {
        static BUILTIN: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
        BUILTIN.get_or_init(|| Registry::new(super::KINDS))
    }

    /// This registry followed by `more` (a module above `policy` adding its kinds).
    pub fn with(&self, more: &[&'static dyn PolicyEntry]) -> Registry {
        let mut entries = self.entries.clone();
        entries.extend_from_slice(more);
        Registry { entries }
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[&'static dyn PolicyEntry] {
        &self.entries
    }

    /// The entry named `name` on the command line.
    pub fn get(&self, name: &str) -> Option<&'static dyn PolicyEntry> {
        self.entries.iter().copied().find(|e| e.id().name() == name)
    }

    /// The entry a spec's `policy.kind` selects.
    pub fn for_spec_kind(&self, kind: PolicyKind) -> Option<&'static dyn PolicyEntry> {
        self.entries.iter().copied().find(|e| e.spec_kind() == Some(kind))
    }

    /// The kind of a command-line label (`hpa:target=0.5` → `hpa`), when registered.
    pub fn kind_of(&self, label: &str) -> Option<KindId> {
        self.get(label.split(':').next().unwrap_or("").trim()).map(|e| e.id())
    }

    /// The valid policy names and their keys, one per line (for errors and `--help`).
    pub fn usage(&self) -> String {
        self.entries.iter().map(|e| format!("{}; also {COMMON_KEYS}", e.usage())).collect::<Vec<_>>().join("\n  ")
    }

    fn not_registered(kind: PolicyKind) -> PolicyError {
        PolicyError::NotRegistered { kind: kind.as_str().into() }
    }

    /// Checks the `policy` section: the interval, and the selected kind's block (values the
    /// schema's ranges cannot express, e.g. a zero target). A kind not registered here is
    /// checked by the registry that builds it.
    pub fn validate(&self, p: &PolicySpec) -> Result<(), PolicyError> {
        if p.interval_seconds == 0 {
            return Err(invalid("spec.policy.intervalSeconds", "must be at least 1"));
        }
        match self.for_spec_kind(p.kind) {
            Some(e) => e.validate_section(p),
            None => Ok(()),
        }
    }

    /// Builds the policy selected by `spec.policy`.
    pub fn build(&self, spec: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError> {
        self.validate(&spec.policy)?;
        let entry = self.for_spec_kind(spec.policy.kind).ok_or_else(|| Self::not_registered(spec.policy.kind))?;
        entry.from_spec(spec)
    }

    /// Parses one command-line name (see the module docs). `base` supplies the placement,
    /// variant selection and interval (usually the scenario's spec policy section).
    pub fn parse(&self, name: &str, base: &PolicySpec) -> Result<PolicyChoice, PolicyError> {
        let (kind, rest) = match name.split_once(':') {
            Some((k, r)) => (k.trim(), Some(r)),
            None => (name.trim(), None),
        };
        let Some(entry) = self.get(kind) else {
            if let Some(k) = PolicyKind::ALL.iter().find(|k| k.as_str() == kind) {
                return Err(Self::not_registered(*k));
            }
            return Err(PolicyError::UnknownName { name: name.into(), valid: format!("\n  {}", self.usage()) });
        };
        let spec = PolicySpec {
            interval_seconds: base.interval_seconds,
            placement: base.placement,
            variant_selection: base.variant_selection,
            ..PolicySpec::default()
        };
        let (spec, params) = entry.parse_cli(name, rest, spec)?;
        Ok(PolicyChoice { label: name.into(), entry, spec, params })
    }

    /// Parses a comma-separated list of names (`--policies hpa,kpa,static-peak`). An item
    /// whose part before any `:` holds `=` is not a name but a key of the name before it
    /// (`dqn:PATH,max-z=6,fallback=hpa` is one name): kind names never hold `=`.
    pub fn parse_list(&self, list: &str, base: &PolicySpec) -> Result<Vec<PolicyChoice>, PolicyError> {
        let mut names: Vec<String> = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let head = item.split(':').next().unwrap_or_default();
            match names.last_mut() {
                Some(prev) if head.contains('=') => {
                    prev.push(',');
                    prev.push_str(item);
                }
                _ => names.push(item.to_string()),
            }
        }
        let mut out: Vec<PolicyChoice> = Vec::new();
        for name in names.iter().map(String::as_str) {
            if out.iter().any(|c| c.label == name) {
                return Err(invalid(name, "is listed twice"));
            }
            out.push(self.parse(name, base)?);
        }
        if out.is_empty() {
            return Err(PolicyError::Missing {
                field: "--policies".into(),
                message: format!("name at least one policy:\n  {}", self.usage()),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every registry in use: the policy module's, and the full one (with the rl module's).
    fn registries() -> [&'static Registry; 2] {
        [Registry::builtin(), crate::rl::registry()]
    }

    #[test]
    fn names_are_unique_and_every_spec_kind_has_an_entry() {
        for r in registries() {
            let mut names = BTreeSet::new();
            for e in r.entries() {
                assert!(names.insert(e.id()), "`{}` is registered twice", e.id());
                assert!(e.usage().starts_with(e.id().name()), "{}: usage `{}`", e.id(), e.usage());
                assert!(!e.id().name().contains([':', ',', '=']), "{}: not a command-line name", e.id());
            }
            let spec_kinds: Vec<PolicyKind> = r.entries().iter().filter_map(|e| e.spec_kind()).collect();
            let unique: BTreeSet<&str> = spec_kinds.iter().map(|k| k.as_str()).collect();
            assert_eq!(unique.len(), spec_kinds.len(), "a spec kind with two entries: {spec_kinds:?}");
        }
        let all = crate::rl::registry();
        for k in PolicyKind::ALL {
            let e = all.for_spec_kind(k).unwrap_or_else(|| panic!("`{}` has no entry", k.as_str()));
            assert_eq!(e.id().name(), k.as_str(), "the command-line name of `kind: {}`", k.as_str());
        }
        // The policy module's registry has every kind but the ones modules above it add.
        for k in PolicyKind::ALL {
            assert_eq!(Registry::builtin().for_spec_kind(k).is_none(), k == PolicyKind::Dqn, "{}", k.as_str());
        }
    }

    #[test]
    fn every_name_of_the_usage_parses_and_reports_its_kind() {
        let base = PolicySpec::default();
        let all = crate::rl::registry();
        for e in all.entries() {
            let name = match e.id().name() {
                "static" => "static:2".to_string(),
                "dqn" => "dqn:/some/ckpt".to_string(),
                n => n.to_string(),
            };
            let c = all.parse(&name, &base).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(c.kind(), e.id());
            assert_eq!(all.kind_of(&name), Some(e.id()));
            let c = all.parse(&format!("{name}:placement=spread"), &base);
            if e.id().name() != "dqn" {
                assert_eq!(c.unwrap().spec.placement, PlacementKind::Spread);
            }
        }
        let e = Registry::builtin().parse("dqn:/x", &base).unwrap_err().to_string();
        assert!(e.contains("rl module"), "{e}");
    }
}
