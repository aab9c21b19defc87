//! A KEDA-style queue-length scaler: replicas from the length of the engines' queues.
//!
//! KEDA polls a trigger (here `vllm:num_requests_waiting`, summed over the unit) every
//! `pollingIntervalSeconds` and hands it to an HPA with an average-value target, which gives
//! `raw = ceil(waiting / queueLengthPerReplica)`. This policy follows that shape:
//! 1. The metric is read only on polling ticks (the first tick, then whenever at least
//!    `pollingIntervalSeconds` have passed since the last poll); between polls the last
//!    answer is repeated.
//! 2. Scale-up is immediate: when `raw` exceeds the current count, the count becomes `raw`.
//! 3. The unit is *active* while the poll asks for at least the current count (a backlog the
//!    fleet is sized for) — the analogue of KEDA's active trigger. Scale-down to
//!    `max(raw, 1)` happens only after `cooldownSeconds` without an active poll.
//! 4. Scale to zero: with `allowScaleToZero`, once the unit has had no traffic (no arrivals,
//!    nothing running or waiting) for `cooldownSeconds`, it goes to 0; the first request
//!    after that brings it back to 1 at the next poll (and pays the cold start).
//!    Without it the floor is 1.
//!
//! The policy reacts only to queued requests, so with continuous batching (where requests
//! queue only once the batch or KV cache is full) it scales late and sheds replicas while
//! they are busy: the known weakness of queue-threshold scaling for LLM serving.
//!
//! Parameters ([`QueueParams`]): `queueLengthPerReplica` (4), `pollingIntervalSeconds`
//! (30), `cooldownSeconds` (300), `allowScaleToZero` (false).

use crate::policy::config::{PolicyKind, PolicySpec, QueueParams};
use crate::policy::registry::{check_pos, num, BuildContext, KindId, PolicyError, PolicyKindDef};
use crate::policy::scaled::{ScaledPolicy, Scaler, UnitMetrics};
use crate::policy::Policy;

/// The queue-threshold algorithm for one scaling unit.
#[derive(Clone, Debug)]
pub struct QueueScaler {
    params: QueueParams,
    last_poll_s: Option<f64>,
    last_active_s: Option<f64>,
    last_traffic_s: Option<f64>,
    answer: Option<u32>,
    last: String,
}

impl QueueScaler {
    /// A queue scaler with the given parameters.
    pub fn new(params: QueueParams) -> Self {
        QueueScaler {
            params,
            last_poll_s: None,
            last_active_s: None,
            last_traffic_s: None,
            answer: None,
            last: String::new(),
        }
    }
}

impl Scaler for QueueScaler {
    fn recommend(&mut self, m: &UnitMetrics) -> u32 {
        let now = m.time_s;
        let current = m.current_replicas;
        let polling = f64::from(self.params.polling_interval_seconds);
        let due = self.last_poll_s.is_none_or(|t| now - t >= polling);
        if !due {
            return self.answer.unwrap_or(current);
        }
        self.last_poll_s = Some(now);
        let per = self.params.queue_length_per_replica;
        let raw = if per > 0.0 { (m.waiting_requests / per - 1e-9).ceil().max(0.0) as u32 } else { current };
        let traffic = m.arrival_rate_rps > 0.0 || m.ongoing_requests() > 0.0;
        if traffic || self.last_traffic_s.is_none() {
            self.last_traffic_s = Some(now);
        }
        if raw >= current || self.last_active_s.is_none() {
            self.last_active_s = Some(now);
        }
        let cooldown = f64::from(self.params.cooldown_seconds);
        let cooled = self.last_active_s.is_some_and(|t| now - t >= cooldown);
        let idle = !traffic && self.last_traffic_s.is_some_and(|t| now - t >= cooldown);
        let desired = if raw > current {
            raw
        } else if self.params.allow_scale_to_zero && idle {
            0
        } else if current == 0 {
            // Activation from zero.
            u32::from(traffic)
        } else if cooled {
            raw.max(1)
        } else {
            current
        };
        self.last =
            format!("{:.0} waiting, raw {raw}{}", m.waiting_requests, if cooled { "" } else { ", cooling down" });
        self.answer = Some(desired);
        desired
    }

    fn explain(&self) -> String {
        self.last.clone()
    }
}

/// The `queue` kind (`kind: queue`, `queue[:KEY=VALUE]...`).
pub struct Queue;

impl PolicyKindDef for Queue {
    type Params = QueueParams;
    const ID: KindId = KindId("queue");
    const USAGE: &'static str = "queue[:target=F][:polling=S][:cooldown=S][:zero=true|false]";
    const KEYS: &'static str = "target, polling, cooldown, zero";
    const SPEC_KIND: Option<PolicyKind> = Some(PolicyKind::Queue);

    fn from_section(&self, p: &PolicySpec) -> Result<QueueParams, PolicyError> {
        Ok(p.queue.clone().unwrap_or_default())
    }

    fn to_section(&self, params: &QueueParams, p: &mut PolicySpec) {
        p.queue = Some(params.clone());
    }

    fn set(&self, queue: &mut QueueParams, k: &str, v: &str, key: &str) -> Result<bool, PolicyError> {
        match k {
            "target" => queue.queue_length_per_replica = num(key, v, "a number")?,
            "polling" => queue.polling_interval_seconds = num(key, v, "whole seconds")?,
            "cooldown" => queue.cooldown_seconds = num(key, v, "whole seconds")?,
            "zero" => queue.allow_scale_to_zero = num(key, v, "true or false")?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn validate(&self, q: &QueueParams) -> Result<(), PolicyError> {
        check_pos("spec.policy.queue.queueLengthPerReplica", q.queue_length_per_replica)
    }

    fn build(&self, params: &QueueParams, ctx: &BuildContext<'_>) -> Result<Box<dyn Policy>, PolicyError> {
        Ok(Box::new(ScaledPolicy::new("queue", QueueScaler::new(params.clone()), ctx.placement(), ctx.info())))
    }
}
