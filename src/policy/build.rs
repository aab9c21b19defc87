//! Building policies with the kinds of this module ([`Registry::builtin`]): from the
//! `policy` section of a spec ([`build_policy`]), and from the names the `compare` command
//! takes ([`parse_policy_name`]).
//!
//! # Policy names on the command line
//!
//! `KIND[:ARG][:KEY=VALUE]...`, e.g. `hpa`, `hpa:target=8:window=60`, `kpa:stable-window=120`,
//! `static:4`, `static-peak`, `static-mean:capacity=2.5`, `queue:zero=true`,
//! `forecast:capacity=2:percentile=95`, `clairvoyant:capacity=1.3` (twin only), `dqn:PATH`
//! (with the rl module's registry, `llmos::rl::registry()`). Every kind also takes
//! `placement=cheapest|spread` and `variants=fixed|qualityFirst|costFirst`. Each kind
//! declares its keys in its own file ([`crate::policy::registry`]); an unknown name or key,
//! or a bad value, is an error that lists what is valid.

use crate::crd::LLMWorkloadSpec;
use crate::policy::config::PolicySpec;
use crate::policy::registry::Registry;
use crate::policy::Policy;

pub use crate::policy::registry::{PolicyChoice, PolicyError};

/// Builds the heuristic policy `name` (command-line form) for `spec`, the spec's own
/// `policy` section as the base: what a learned policy leans on (its out-of-range
/// fallback, a residual layout's base policy). Only this module's kinds can be built: a
/// learned kind, or one only the comparison harness can build, is refused; errors name
/// `field`.
pub fn build_heuristic(name: &str, spec: &LLMWorkloadSpec, field: &str) -> Result<Box<dyn Policy>, PolicyError> {
    use crate::policy::registry::invalid;
    let refused = || {
        invalid(
            field,
            format!(
                "`{name}` cannot be used here: give a heuristic kind (hpa, kpa, forecast, ray, queue, static) or hold"
            ),
        )
    };
    let reg = Registry::builtin();
    let choice = match reg.parse(name, &spec.policy) {
        Ok(c) => c,
        Err(PolicyError::NotRegistered { .. }) => return Err(refused()),
        Err(e) => return Err(invalid(field, format!("`{name}`: {e}"))),
    };
    if reg.get(choice.kind().name()).is_some_and(|e| e.learned() || e.needs_harness()) {
        return Err(refused());
    }
    choice.build_for(spec).map_err(|e| invalid(field, format!("`{name}`: {e}")))
}

/// Builds the policy selected by `spec.policy` (`dqn` is refused: it is built by the rl
/// module's registry, `llmos::rl::registry()`).
pub fn build_policy(spec: &LLMWorkloadSpec) -> Result<Box<dyn Policy>, PolicyError> {
    Registry::builtin().build(spec)
}

/// Checks the parameters of the selected policy kind (values the schema ranges cannot
/// express, e.g. a zero target).
pub fn validate_policy_spec(p: &PolicySpec) -> Result<(), PolicyError> {
    Registry::builtin().validate(p)
}

/// The valid policy names and their keys, one per line (for errors and `--help`).
pub fn valid_policy_names() -> String {
    Registry::builtin().usage()
}

/// Parses a comma-separated list of policy names (`--policies hpa,kpa,static-peak`).
pub fn parse_policy_list(list: &str, base: &PolicySpec) -> Result<Vec<PolicyChoice>, PolicyError> {
    Registry::builtin().parse_list(list, base)
}

/// Parses one policy name (see the module docs). `base` supplies the placement, variant
/// selection and interval (usually the scenario's spec policy section).
pub fn parse_policy_name(name: &str, base: &PolicySpec) -> Result<PolicyChoice, PolicyError> {
    Registry::builtin().parse(name, base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::{HpaParams, StaticParams};
    use crate::policy::static_policy::SizedParams;

    #[test]
    fn parses_names_with_parameters() {
        let base = PolicySpec::default();
        let c = parse_policy_name("hpa:target=8:window=60", &base).unwrap();
        let h = c.spec.hpa.clone().unwrap();
        assert_eq!(h.targets[0].target, 8.0);
        assert_eq!(h.scale_down_stabilization_seconds, 60);
        assert_eq!(c.params::<HpaParams>(), Some(&h));
        let c = parse_policy_name("static:4", &base).unwrap();
        assert_eq!(c.spec.r#static.as_ref().unwrap().replicas, 4);
        assert_eq!(c.params::<StaticParams>().unwrap().replicas, 4);
        let c = crate::rl::registry().parse("dqn:/tmp/ck", &base).unwrap();
        assert_eq!(c.kind().name(), "dqn");
        assert_eq!(c.spec.dqn.as_ref().unwrap().checkpoint, "/tmp/ck");
        let c = parse_policy_name("static-peak:capacity=2", &base).unwrap();
        assert_eq!(c.kind().name(), "static-peak");
        assert_eq!(c.params::<SizedParams>().unwrap().per_replica_rps, Some(2.0));
    }

    #[test]
    fn bad_names_list_the_valid_ones() {
        let base = PolicySpec::default();
        let e = parse_policy_name("hpx", &base).unwrap_err().to_string();
        assert!(e.contains("unknown policy `hpx`") && e.contains("kpa[") && e.contains("static-peak"), "{e}");
        let e = parse_policy_name("hpa:wnidow=3", &base).unwrap_err().to_string();
        assert!(e.contains("unknown key `wnidow`") && e.contains("window"), "{e}");
        let e = parse_policy_name("kpa:utilization=2", &base).unwrap_err().to_string();
        assert!(e.contains("targetUtilization"), "{e}");
        let e = parse_policy_name("queue:target=abc", &base).unwrap_err().to_string();
        assert!(e.contains("`abc` is not a number"), "{e}");
        assert!(parse_policy_list("hpa,hpa", &base).is_err());
        assert!(parse_policy_name("dqn", &base).is_err());
        assert!(crate::rl::registry().parse("dqn", &base).is_err());
        assert!(crate::rl::registry().parse("dqn:", &base).is_err());
    }
}
