//! Shared by the learned-policy tests (tests/rl_residual.rs, tests/rl_capacity.rs): a
//! policy wrapper that records the reason of every decision the policy makes.

#![allow(dead_code)]

use llmos::policy::{Decision, Observation, Policy};
use llmos::rl::policy::DqnPolicy;

/// Records every decision's reason of the policy it wraps.
pub struct Reasons(pub DqnPolicy, pub Vec<String>);

impl Policy for Reasons {
    fn name(&self) -> &str {
        "reasons"
    }
    fn decide(&mut self, obs: &Observation) -> Decision {
        let d = self.0.decide(obs);
        self.1.push(d.reason.clone());
        d
    }
    fn reset(&mut self) {
        self.0.reset();
    }
}
