//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas exactly one reconciles.
//!
//! The protocol is the one Kubernetes' own controllers use: a candidate reads the Lease;
//! it takes it when nobody holds it, when it already holds it (a renewal), or when the
//! holder's record has not changed for `leaseDurationSeconds` as this candidate observed
//! it on its own clock. The holder's `renewTime` is written with the holder's clock and
//! is never compared with the candidate's: with clocks skewed by more than a lease
//! duration, comparing them would let a standby take the Lease from a leader that renews
//! on time (or keep a dead leader's Lease forever). A new candidate therefore waits one
//! lease duration after it first sees a held Lease, as client-go's elector does. Every
//! write is a `replace` carrying the `resourceVersion` that was read, so two candidates
//! racing for an expired Lease cannot both win: the API server rejects the second write
//! with a conflict.
//! The leader renews every `retry_period`; if it cannot renew within `renew_deadline`
//! it must stop reconciling. On shutdown it releases the Lease (clears the holder) so a
//! standby takes over at once instead of after `lease_duration`.
//!
//! Times come from the caller's clock ([`LeaderElector::try_acquire_or_renew_at`]), so
//! tests can drive expiry without sleeping.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;

/// Settings of one candidate.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This candidate's identity (pod name, or hostname + pid).
    pub identity: String,
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leadership.
    pub renew_deadline: Duration,
    /// Time between attempts (renewals of the leader, tries of a standby).
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Defaults as Kubernetes' controllers use them: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseConfig {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The identity of this process: `$POD_NAME`, else `<hostname>-<pid>`.
pub fn default_identity() -> String {
    if let Ok(p) = std::env::var("POD_NAME") {
        if !p.is_empty() {
            return p;
        }
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "llmos".into());
    format!("{host}-{}", std::process::id())
}

/// Errors talking to the API server about the Lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API call failed for a reason other than a lost race.
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

/// One candidate for the Lease.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The other holder's record as last read, and when (on this candidate's clock) it
    /// was first seen in that state.
    observed: std::sync::Arc<std::sync::Mutex<Option<(String, Timestamp)>>>,
}

/// What identifies one state of a Lease held by someone: holder, renewal and the
/// object's version (any renewal changes it).
fn record_of(lease: &Lease) -> String {
    let spec = lease.spec.as_ref();
    format!(
        "{}|{:?}|{}",
        spec.and_then(|s| s.holder_identity.as_deref()).unwrap_or(""),
        spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
        lease.metadata.resource_version.as_deref().unwrap_or("")
    )
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl LeaderElector {
    /// A candidate using `client`.
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        LeaderElector { api: Api::namespaced(client, &cfg.namespace), cfg, observed: Default::default() }
    }

    /// This candidate's settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api { namespace: self.cfg.namespace.clone(), name: self.cfg.name.clone(), source }
    }

    /// Tries to take or renew the Lease now; `Ok(true)` when this candidate holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaderError> {
        self.try_acquire_or_renew_at(Timestamp::now()).await
    }

    /// Tries to take or renew the Lease as if the time were `now`.
    pub async fn try_acquire_or_renew_at(&self, now: Timestamp) -> Result<bool, LeaderError> {
        let duration_s = i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX).max(1);
        let existing = match self.api.get_opt(&self.cfg.name).await {
            Ok(l) => l,
            Err(e) => return Err(self.err(e)),
        };
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(duration_s),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_status(&e, 409) => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.cfg.identity.as_str());
        if !mine && holder.is_some() {
            let held_for =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(duration_s).max(1)));
            // Expiry on this candidate's clock only: when did it first see this record?
            let record = record_of(&lease);
            let since = {
                let mut obs = self.observed.lock().unwrap_or_else(|e| e.into_inner());
                match obs.as_ref() {
                    Some((r, t)) if *r == record => *t,
                    _ => {
                        *obs = Some((record, now));
                        now
                    }
                }
            };
            let expired = since.checked_add(held_for).map_or(true, |until| until <= now);
            if !expired {
                return Ok(false);
            }
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        if !mine {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            spec.acquire_time = Some(MicroTime(now));
            spec.holder_identity = Some(self.cfg.identity.clone());
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration_s);
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 409) => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// The current holder of the Lease, if any.
    pub async fn holder(&self) -> Result<Option<String>, LeaderError> {
        let l = self.api.get_opt(&self.cfg.name).await.map_err(|e| self.err(e))?;
        Ok(l.and_then(|l| l.spec).and_then(|s| s.holder_identity).filter(|h| !h.is_empty()))
    }

    /// Gives the Lease up if this candidate holds it (clears the holder, so a standby
    /// takes over on its next try instead of waiting for expiry).
    pub async fn release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await.map_err(|e| self.err(e))? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Waits until this candidate holds the Lease, trying every `retry_period`.
    pub async fn acquire(&self) -> Result<(), LeaderError> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: cannot read or write the lease; retrying"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews the Lease every `retry_period` while leading; returns when leadership is
    /// lost (another holder, or no successful renewal within `renew_deadline`).
    ///
    /// A renewal that hangs (an API server whose etcd is down answers only after its own
    /// 60 s timeout) is abandoned at the renew deadline: leadership ends then, not when
    /// the request finally fails, so a leader cut off from its Lease never acts for longer
    /// than `renew_deadline` after its last successful renewal.
    pub async fn keep_renewing(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            let left = self.cfg.renew_deadline.saturating_sub(last_ok.elapsed()).max(Duration::from_millis(1));
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => last_ok = tokio::time::Instant::now(),
                Ok(Ok(false)) => {
                    tracing::error!(lease = %self.cfg.name, "leader election: another candidate holds the lease");
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election: renewal failed"),
                Err(_) => tracing::warn!("leader election: renewal did not answer within the renew deadline"),
            }
            if last_ok.elapsed() >= self.cfg.renew_deadline {
                tracing::error!("leader election: no renewal within the renew deadline");
                return;
            }
        }
    }
}
