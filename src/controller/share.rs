//! The arbiter of shared GPU pools inside the operator.
//!
//! Every reconcile of a workload with `poolRefs` runs [`crate::arbiter::arbitrate`] (the
//! same function the twin runs) over the workloads that share its GPUPools, holding one
//! lock for the whole reconcile, so two decisions never together over-commit a pool:
//!
//! 1. The plan of the reconcile proposes replicas per slot (the policy and its shield at
//!    a tick; what the Deployments hold otherwise). The proposals of the other workloads
//!    are their last ones, kept here ([`SharedPools`]); a workload this process has not
//!    reconciled yet proposes what it holds.
//! 2. What each workload holds is read from its Deployments (the controller's watch
//!    cache, or a list), unless this process wrote a Deployment more recently than the
//!    cache shows (by its generation): then what was written counts. So a write that
//!    has not reached the cache is never counted twice, nor missed.
//! 3. A pool's capacity is its `capacityGpus`, or, without one, the allocatable GPUs of
//!    the Nodes its `nodeSelector` matches (a label-selected list, kept 10 s). With
//!    `capacityGpus` set, GPUs are granted before the Nodes exist, so a cluster
//!    autoscaler can add Nodes for the Pending pods.
//! 4. Victims first: every other workload granted fewer replicas than it holds is scaled
//!    down now (its Deployment applied as its own reconcile would, with a `Preempted`
//!    Event on it); then the workload of this reconcile gets its grants, trimmed to what
//!    the pool has free after the writes that succeeded. A victim whose write failed
//!    keeps its GPUs and the preemptor waits for them.
//! 5. After the reconcile's writes, the GPUPools' status (Nodes, allocatable, capacity,
//!    allocated and pending GPUs, workloads) is written where it changed.
//!
//! A workload that is being deleted, or whose poolRefs cannot be resolved, keeps what it
//! holds and is never scaled down by another workload's reconcile. The arbitration is
//! among the workloads this operator watches (a namespaced operator sees its namespace).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;

use crate::arbiter::{arbitrate, ArbiterEvent, Claim, PoolCapacity, SlotClaim};
use crate::crd::pool::{pool_status_from_nodes, resolve_pools, shared_slots, GPUPoolSummary};
use crate::crd::{ArbitratedSlot, ArbitrationStatus, GPUPool, GPUPoolStatus, LLMWorkload, PreemptionStatus};

use super::desired::{self, deployment_name, ready_replicas, spec_replicas, Slot};
use super::plan::{EventReason, Grants, PlannedEvent};
use super::{execute, key_of, kube_err, Context, Error};

/// How long a pool's count of Node GPUs is reused before the Nodes are listed again.
const NODE_CACHE: Duration = Duration::from_secs(10);

/// What the operator remembers between reconciles of workloads on shared pools, behind
/// the lock every such reconcile holds from its plan to its last write.
#[derive(Default)]
pub struct SharedPools {
    book: tokio::sync::Mutex<Book>,
}

impl SharedPools {
    /// Takes the lock of the shared pools (held by one reconcile at a time).
    pub(super) async fn lock(&self) -> tokio::sync::MutexGuard<'_, Book> {
        self.book.lock().await
    }
}

/// The memory behind [`SharedPools`]' lock.
#[derive(Default)]
pub struct Book {
    /// Per workload (`namespace/name`): its last proposal and whether it had traffic.
    workloads: HashMap<String, Entry>,
    /// Per Deployment (`namespace/name`): replicas this process applied, and the
    /// generation the API server gave the object then.
    applied: HashMap<String, (u32, i64)>,
    /// Per GPUPool: when its Nodes were counted, and the count (Nodes, allocatable GPUs)
    /// or why the Nodes could not be counted.
    nodes: HashMap<String, (Instant, NodeCount)>,
}

/// A pool's Nodes and their allocatable GPUs, or why they could not be counted.
type NodeCount = Result<(u32, u32), String>;

#[derive(Clone, Debug, Default)]
struct Entry {
    /// Replicas proposed per shared slot at the workload's last tick.
    proposed: BTreeMap<Slot, u32>,
    has_traffic: bool,
    /// The last preemption of this workload's replicas (for its status).
    last_preempted: Option<PreemptionStatus>,
}

impl Book {
    /// Forgets a deleted workload.
    pub(super) fn forget(&mut self, key: &str) {
        self.workloads.remove(key);
    }
}

/// One GPUPool a reconcile arbitrates over.
#[derive(Clone, Debug)]
pub(super) struct PoolView {
    name: String,
    pool: GPUPool,
    nodes: u32,
    allocatable: u32,
    capacity: u32,
    /// Why the Nodes could not be counted (the pool then has `capacityGpus` or nothing).
    nodes_error: Option<String>,
}

/// A workload in the arbitration, with its Deployments.
struct Member {
    key: String,
    /// As written (its poolRefs say which slots are shared).
    wl: LLMWorkload,
    /// With poolRefs resolved; `None` when they cannot be (it is then never scaled down
    /// by another workload's reconcile).
    resolved: Option<LLMWorkload>,
    deployments: Vec<Deployment>,
    /// Shared slots on the reconcile's pools: (slot, pool index, GPUs per replica).
    slots: Vec<(Slot, usize, u32)>,
}

/// What [`arbitrate_reconcile`] decided, for the plan and for what follows the writes.
pub(super) struct Outcome {
    /// The grants of the reconciled workload.
    pub grants: Grants,
    pools: Vec<PoolView>,
    /// Replicas per pool held by the other workloads after the victims' writes, and
    /// their ready replicas' GPUs: (allocated GPUs, ready GPUs, workloads).
    others: Vec<(u32, u32, u32)>,
}

/// The replicas a Deployment holds: what this process applied when the cache has not
/// caught up with that write yet (by generation), else the cache's `spec.replicas`.
fn held(book: &Book, key: &str, cached: Option<&Deployment>) -> u32 {
    match (book.applied.get(key), cached) {
        (Some(&(r, g)), Some(d)) if d.metadata.generation.unwrap_or(0) < g => r,
        (Some(&(r, _)), None) => r,
        (_, Some(d)) => spec_replicas(d),
        (None, None) => 0,
    }
}

/// Whether variant `v` of `spec` (as written) may run on pool slot `slot`.
fn uses(v: &crate::crd::VariantSpec, slot: &str) -> bool {
    v.pools.is_empty() || v.pools.iter().any(|p| p == slot)
}

/// The shared slots of `wl` (as written) on `pools`, in the order of its variants.
fn member_slots(wl: &LLMWorkload, pools: &[PoolView]) -> Vec<(Slot, usize, u32)> {
    let shared = shared_slots(&wl.spec);
    let mut out = Vec::new();
    for v in &wl.spec.variants {
        for r in &wl.spec.pool_refs {
            let slot = r.slot_name();
            if shared.get(slot) != Some(&r.pool.as_str()) || !uses(v, slot) {
                continue;
            }
            if let Some(p) = pools.iter().position(|p| p.name == r.pool) {
                out.push((Slot::new(&v.name, slot), p, v.gpus_per_replica.max(1)));
            }
        }
    }
    out
}

/// Counts the Nodes of `pool` (a list by its node selector, reused for [`NODE_CACHE`]).
async fn count_nodes(ctx: &Context, book: &mut Book, name: &str, pool: &GPUPool) -> Result<(u32, u32), String> {
    if let Some((at, n)) = book.nodes.get(name) {
        if at.elapsed() < NODE_CACHE {
            return n.clone();
        }
    }
    let selector: Vec<String> = pool.spec.node_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let n = match api.list(&ListParams::default().labels(&selector.join(","))).await {
        Ok(list) => pool_status_from_nodes(&pool.spec, &list.items).map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot list the Nodes of GPUPool {name}: {e}")),
    };
    book.nodes.insert(name.to_string(), (Instant::now(), n.clone()));
    n
}

/// The LLMWorkloads the operator sees: the controller's cache once synced, else a list.
async fn all_workloads(ctx: &Context) -> Result<Vec<LLMWorkload>, Error> {
    use futures::FutureExt;
    if let Some(store) = ctx.llmworkloads.get() {
        if store.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok()) {
            return Ok(store.state().iter().map(|w| (**w).clone()).collect());
        }
    }
    let api: Api<LLMWorkload> = Api::all(ctx.client.clone());
    Ok(api.list(&ListParams::default()).await.map_err(kube_err("listing LLMWorkloads"))?.items)
}

/// What one reconcile's workload asks of the arbitration.
pub(super) struct Ask<'a> {
    /// The workload as written (its poolRefs say which slots are shared).
    pub wl: &'a LLMWorkload,
    /// The same with its poolRefs resolved into pools.
    pub resolved: &'a LLMWorkload,
    /// Its Deployments as the reconcile read them.
    pub own: &'a [Deployment],
    /// Replicas per slot the plan proposes.
    pub proposal: &'a BTreeMap<Slot, u32>,
    /// Whether the proposal comes from a decision of this tick (else only first
    /// placements are proposals; the rest keeps what it holds).
    pub decided: bool,
    /// Whether the tick saw arrivals (`None` without a tick).
    pub traffic: Option<bool>,
}

/// The arbitration of one reconcile: its pools, members (this workload first) and claims.
struct Round {
    key: String,
    at: String,
    pools: Vec<PoolView>,
    members: Vec<Member>,
    claims: Vec<Claim>,
    /// Indices of the members in the arbitrated claims (the others keep what they hold).
    index: Vec<usize>,
    alloc: crate::arbiter::Allocation,
    /// Replicas granted per member and slot.
    granted: Vec<Vec<u32>>,
    /// Replicas held per member and slot after the victims' writes.
    after: Vec<Vec<u32>>,
}

/// Arbitrates the shared pools of `ask.wl` for one reconcile; scales victims down first
/// and returns the workload's grants, trimmed to what its pools have free after that.
pub(super) async fn arbitrate_reconcile(
    ctx: &Context,
    book: &mut Book,
    ask: &Ask<'_>,
    gpupools: &BTreeMap<String, GPUPool>,
    now: Timestamp,
) -> Result<Outcome, Error> {
    let pools = pool_views(ctx, book, ask.wl, gpupools).await;
    let members = members(ctx, ask, &pools, gpupools).await?;
    let claims = claims(book, ask, &members, &pools);
    let mut round = solve(key_of(ask.wl), now.to_string(), pools, members, claims);
    scale_victims(ctx, book, &mut round).await;
    let usage = others_usage(&round);
    let mine = trim_own(&round, &usage);
    Ok(own_outcome(book, ask, &round, mine, usage))
}

/// The GPUPools of `wl` with their capacities: `capacityGpus`, else the allocatable
/// GPUs of the Nodes they select.
async fn pool_views(
    ctx: &Context,
    book: &mut Book,
    wl: &LLMWorkload,
    gpupools: &BTreeMap<String, GPUPool>,
) -> Vec<PoolView> {
    let mut names: Vec<String> = wl.spec.pool_refs.iter().map(|r| r.pool.clone()).collect();
    names.sort();
    names.dedup();
    let mut pools = Vec::new();
    for name in names {
        let Some(pool) = gpupools.get(&name) else { continue };
        let (nodes, allocatable, nodes_error) = match count_nodes(ctx, book, &name, pool).await {
            Ok((n, g)) => (n, g, None),
            Err(e) => (0, 0, Some(e)),
        };
        let capacity = pool.spec.capacity_gpus.unwrap_or(allocatable);
        pools.push(PoolView { name, pool: pool.clone(), nodes, allocatable, capacity, nodes_error });
    }
    pools
}

/// The members of the arbitration: the asking workload first, then every other that
/// shares one of its pools (by name), each with its Deployments.
async fn members(
    ctx: &Context,
    ask: &Ask<'_>,
    pools: &[PoolView],
    gpupools: &BTreeMap<String, GPUPool>,
) -> Result<Vec<Member>, Error> {
    let key = key_of(ask.wl);
    let specs: BTreeMap<String, crate::crd::GPUPoolSpec> =
        gpupools.iter().map(|(n, p)| (n.clone(), p.spec.clone())).collect();
    let mut members = vec![Member {
        key: key.clone(),
        wl: ask.wl.clone(),
        resolved: Some(ask.resolved.clone()),
        deployments: ask.own.to_vec(),
        slots: member_slots(ask.wl, pools),
    }];
    let mut others = all_workloads(ctx).await?;
    others.sort_by_key(key_of);
    // The watch cache's Deployments grouped by workload once, so a reconcile costs one
    // pass over them however many workloads share the pools (a list per workload
    // before the cache has synced).
    let cached = cached_deployments_by_workload(ctx);
    for other in others {
        let okey = key_of(&other);
        if okey == key || other.spec.pool_refs.is_empty() {
            continue;
        }
        let slots = member_slots(&other, pools);
        if slots.is_empty() {
            continue;
        }
        let resolved = if other.metadata.deletion_timestamp.is_some() {
            None
        } else {
            resolve_pools(&other.spec, &specs).ok().map(|spec| LLMWorkload { spec, ..other.clone() })
        };
        let deployments = match &cached {
            Some(by_workload) => by_workload
                .get(&okey)
                .into_iter()
                .flatten()
                .filter(|d| desired::is_owned_by(&d.metadata, &other))
                .cloned()
                .collect(),
            None => super::owned_deployments(ctx, &other).await?,
        };
        members.push(Member { key: okey, wl: other, resolved, deployments, slots });
    }
    Ok(members)
}

/// The owned Deployments in the controller's watch cache by workload (`namespace/name`
/// from their workload label), or `None` before the cache has synced.
fn cached_deployments_by_workload(ctx: &Context) -> Option<HashMap<String, Vec<Deployment>>> {
    use futures::FutureExt;
    let store = ctx.deployments.get()?;
    if store.wait_until_ready().now_or_never().is_none_or(|r| r.is_err()) {
        return None;
    }
    let mut out: HashMap<String, Vec<Deployment>> = HashMap::new();
    for d in store.state() {
        let Some(w) = d.labels().get(desired::LABEL_WORKLOAD) else { continue };
        let key = format!("{}/{w}", d.namespace().unwrap_or_default());
        out.entry(key).or_default().push((*d).clone());
    }
    for v in out.values_mut() {
        v.sort_by_key(|d| d.name_any());
    }
    Some(out)
}

/// The replicas member `m` holds in `slot` ([`held`]).
fn held_of(book: &Book, m: &Member, slot: &Slot) -> u32 {
    let ns = m.wl.namespace().unwrap_or_default();
    let dn = deployment_name(&m.wl.name_any(), slot);
    held(book, &format!("{ns}/{dn}"), m.deployments.iter().find(|d| d.name_any() == dn))
}

/// Every member's claim: what it holds, and what it proposes (the asking workload: its
/// plan; the others: their last proposal; one that cannot be scaled down: what it holds).
fn claims(book: &Book, ask: &Ask<'_>, members: &[Member], pools: &[PoolView]) -> Vec<Claim> {
    let mut claims = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        let entry = book.workloads.get(&m.key);
        let slots = m
            .slots
            .iter()
            .map(|(slot, p, gpus)| {
                let h = held_of(book, m, slot);
                let exists = m.deployments.iter().any(|d| d.name_any() == deployment_name(&m.wl.name_any(), slot));
                let asked = ask.proposal.get(slot).copied().unwrap_or(h);
                let proposed = if i == 0 && (ask.decided || !exists) {
                    // Between ticks only a slot's first placement is a proposal; the
                    // others keep what they hold (the cache may lag behind a preemption).
                    asked
                } else if i == 0 {
                    h.min(asked)
                } else if m.resolved.is_none() {
                    h
                } else {
                    entry.and_then(|e| e.proposed.get(slot).copied()).unwrap_or(h)
                };
                let max = m.wl.spec.variants.iter().find(|v| v.name == slot.variant).map_or(0, |v| v.max_replicas);
                SlotClaim {
                    variant: slot.variant.clone(),
                    pool: pools[*p].name.clone(),
                    gpus_per_replica: *gpus,
                    held: h,
                    proposed,
                    max: max.max(proposed).max(h),
                    replica_rps: 0.0,
                }
            })
            .collect();
        let last = entry.map(|e| e.has_traffic);
        let has_traffic = if i == 0 { ask.traffic.or(last) } else { last };
        claims.push(Claim {
            workload: m.key.clone(),
            priority: m.wl.spec.scheduling.priority,
            guaranteed_gpus: m.wl.spec.scheduling.guaranteed_gpus,
            has_traffic: has_traffic.unwrap_or(true),
            slots,
        });
    }
    claims
}

/// Runs the arbiter. A member that cannot be scaled down by another's reconcile keeps
/// what it holds: it is left out of the claims and its GPUs out of the capacities.
fn solve(key: String, at: String, pools: Vec<PoolView>, members: Vec<Member>, claims: Vec<Claim>) -> Round {
    let mut capacities: Vec<PoolCapacity> =
        pools.iter().map(|p| PoolCapacity { name: p.name.clone(), capacity_gpus: p.capacity }).collect();
    let fixed: Vec<bool> = members.iter().enumerate().map(|(i, m)| i > 0 && m.resolved.is_none()).collect();
    for (i, c) in claims.iter().enumerate().filter(|(i, _)| fixed[*i]) {
        for (s, sc) in c.slots.iter().enumerate() {
            let p = members[i].slots[s].1;
            capacities[p].capacity_gpus = capacities[p].capacity_gpus.saturating_sub(sc.held * sc.gpus_per_replica);
        }
    }
    let index: Vec<usize> = (0..claims.len()).filter(|i| !fixed[*i]).collect();
    let live: Vec<Claim> = index.iter().map(|&i| claims[i].clone()).collect();
    let alloc = arbitrate(&capacities, &live);
    let mut granted: Vec<Vec<u32>> = claims.iter().map(|c| c.slots.iter().map(|s| s.held).collect()).collect();
    for (k, &i) in index.iter().enumerate() {
        granted[i] = alloc.granted[k].clone();
    }
    let after = granted.clone();
    Round { key, at, pools, members, claims, index, alloc, granted, after }
}

/// Victims first: every other member granted fewer replicas than it holds is scaled
/// down now, with a `Preempted` Event on it. A write that fails leaves the victim's
/// replicas counted as held.
async fn scale_victims(ctx: &Context, book: &mut Book, round: &mut Round) {
    for i in 1..round.members.len() {
        let Some(victim) = round.members[i].resolved.clone() else { continue };
        for s in 0..round.members[i].slots.len() {
            let (h, g) = (round.claims[i].slots[s].held, round.granted[i][s]);
            if g >= h {
                continue;
            }
            round.after[i][s] = h;
            let slot = round.members[i].slots[s].0.clone();
            let Some(dep) = desired::deployment(&victim, &slot, g) else { continue };
            let vns = victim.namespace().unwrap_or_default();
            let dn = dep.name_any();
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &vns);
            let seen = victim_seen(book, &round.members[i].deployments, &vns, &dn);
            match execute::apply_fenced(&api, &dep, seen.as_ref()).await {
                Ok(Some(out)) => {
                    round.after[i][s] = g;
                    if let Some(generation) = out.metadata.generation {
                        book.applied.insert(format!("{vns}/{dn}"), (g, generation));
                    }
                    ctx.metrics.object_write("deployment", "written");
                }
                Ok(None) => {
                    ctx.metrics.object_write("deployment", "refused");
                    let who = &round.members[i].key;
                    tracing::info!(workload = %who, deployment = %dn, "a preempted slot changed since it was read: not scaled down now");
                    continue;
                }
                Err(e) => {
                    let who = &round.members[i].key;
                    tracing::warn!(workload = %who, deployment = %dn, error = %e, "cannot scale a preempted slot down");
                    continue;
                }
            }
            let ev = PlannedEvent::warning(EventReason::Preempted, "Preempt", victim_note(round, i, s));
            execute::publish(ctx, &victim, &ev).await;
            let by = preemptor(&round.alloc.events, &round.index, i, s, &round.claims);
            let gpus = (h - g) * round.members[i].slots[s].2;
            let e = book.workloads.entry(round.members[i].key.clone()).or_default();
            e.last_preempted = Some(PreemptionStatus { time: round.at.clone(), by: by.unwrap_or_default(), gpus });
        }
    }
}

/// The victim's Deployment `dn` as this round read it, to fence the scale-down
/// ([`execute::apply_fenced`]); `None` (an unfenced apply, as before fencing) when this
/// process wrote it since the watch last showed it, whose cache is then behind.
fn victim_seen(book: &Book, cached: &[Deployment], ns: &str, dn: &str) -> Option<super::plan::ObservedDeployment> {
    let d = cached.iter().find(|d| d.name_any() == dn)?;
    let ours = book.applied.get(&format!("{ns}/{dn}")).map(|(_, generation)| *generation);
    if ours.is_some_and(|g| d.metadata.generation.is_some_and(|cached| cached < g)) {
        return None;
    }
    super::plan::ObservedDeployment::of(d)
}

/// The note of a victim's `Preempted` Event (member `i`, slot `s`).
fn victim_note(round: &Round, i: usize, s: usize) -> String {
    let (slot, p, gpus) = &round.members[i].slots[s];
    let (h, g) = (round.claims[i].slots[s].held, round.granted[i][s]);
    let pool = &round.pools[*p];
    let what = format!(
        "GPUPool {}: {} of {h} replicas of {}/{} ({} GPUs)",
        pool.name,
        h - g,
        slot.variant,
        slot.pool,
        (h - g) * gpus
    );
    match preemptor(&round.alloc.events, &round.index, i, s, &round.claims) {
        Some(b) => {
            let prio = round.claims.iter().find(|c| c.workload == b).map_or(0, |c| c.priority);
            format!("{what} preempted for {b} (priority {prio} > {})", round.claims[i].priority)
        }
        None => {
            format!("{what} given back: the pool's capacity ({} GPUs) is below what its workloads held", pool.capacity)
        }
    }
}

/// Per pool: GPUs the other members hold after the victims' writes, their ready GPUs,
/// and how many of them use it.
fn others_usage(round: &Round) -> Vec<(u32, u32, u32)> {
    let mut usage = vec![(0u32, 0u32, 0u32); round.pools.len()];
    for (i, m) in round.members.iter().enumerate().skip(1) {
        let mut seen = vec![false; round.pools.len()];
        for (s, (slot, p, gpus)) in m.slots.iter().enumerate() {
            let held = round.after[i][s];
            let dn = deployment_name(&m.wl.name_any(), slot);
            let ready = m.deployments.iter().find(|d| d.name_any() == dn).map_or(0, ready_replicas);
            usage[*p].0 = usage[*p].0.saturating_add(held * gpus);
            usage[*p].1 = usage[*p].1.saturating_add(ready.min(held) * gpus);
            seen[*p] = true;
        }
        for (p, s) in seen.iter().enumerate() {
            usage[p].2 += u32::from(*s);
        }
    }
    usage
}

/// The asking workload's grants within what its pools have free after the victims'
/// writes (never below what it keeps of what it held).
fn trim_own(round: &Round, usage: &[(u32, u32, u32)]) -> Vec<u32> {
    let mut mine = round.granted[0].clone();
    let me = &round.members[0];
    for (p, pool) in round.pools.iter().enumerate() {
        let free = pool.capacity.saturating_sub(usage[p].0);
        let slots: Vec<usize> = (0..mine.len()).filter(|&s| me.slots[s].1 == p).collect();
        let mut want: u32 = slots.iter().map(|&s| mine[s] * me.slots[s].2).sum();
        for &s in slots.iter().rev() {
            let floor = round.claims[0].slots[s].held.min(round.claims[0].slots[s].proposed);
            while want > free && mine[s] > floor {
                mine[s] -= 1;
                want = want.saturating_sub(me.slots[s].2);
            }
        }
    }
    mine
}

/// The asking workload's grants, Events and status, and what the book remembers of it.
fn own_outcome(book: &mut Book, ask: &Ask<'_>, round: &Round, mine: Vec<u32>, usage: Vec<(u32, u32, u32)>) -> Outcome {
    let key = &round.key;
    let (mut events, mut words) = (Vec::new(), Vec::new());
    let taken: Vec<String> = (1..round.members.len())
        .flat_map(|i| (0..round.members[i].slots.len()).map(move |s| (i, s)))
        .filter(|&(i, s)| round.after[i][s] < round.claims[i].slots[s].held)
        .filter(|&(i, s)| preemptor(&round.alloc.events, &round.index, i, s, &round.claims).as_deref() == Some(key))
        .map(|(i, s)| {
            let (_, p, gpus) = &round.members[i].slots[s];
            let n = (round.claims[i].slots[s].held - round.after[i][s]) * gpus;
            format!(
                "{n} GPUs of GPUPool {} from {} (priority {})",
                round.pools[*p].name, round.members[i].key, round.claims[i].priority
            )
        })
        .collect();
    if !taken.is_empty() {
        let note = format!("took {} (they were scaled down first)", taken.join(", "));
        words.push(note.clone());
        events.push(PlannedEvent::normal(EventReason::Preempting, "Preempt", note));
    }
    for (s, (slot, p, gpus)) in round.members[0].slots.iter().enumerate() {
        let c = &round.claims[0].slots[s];
        let pool = &round.pools[*p];
        if mine[s] < c.proposed && !substituted(&round.alloc.events, &round.index, s) {
            let note = refusal_note(pool, slot, c, mine[s], usage[*p].0, *gpus);
            words.push(note.clone());
            events.push(PlannedEvent::warning(
                EventReason::GpusRefused,
                format!("Refuse {}/{}", slot.variant, slot.pool),
                note,
            ));
        }
        let kept = c.held.min(c.proposed);
        if mine[s] < kept {
            let by = preemptor(&round.alloc.events, &round.index, 0, s, &round.claims);
            let whom = by
                .as_ref()
                .map_or("(the pool's capacity is below what its workloads held)".to_string(), |b| format!("for {b}"));
            let note = format!(
                "GPUPool {}: {} replicas of {}/{} preempted {whom}",
                pool.name,
                kept - mine[s],
                slot.variant,
                slot.pool
            );
            words.push(note.clone());
            events.push(PlannedEvent::warning(EventReason::Preempted, "Preempt", note));
            let e = book.workloads.entry(key.clone()).or_default();
            e.last_preempted = Some(PreemptionStatus {
                time: round.at.clone(),
                by: by.unwrap_or_default(),
                gpus: (kept - mine[s]) * gpus,
            });
        }
    }
    for note in substitutions(round) {
        words.push(note.clone());
        events.push(PlannedEvent::normal(EventReason::Substituted, "Substitute", note));
    }
    let me = &round.members[0];
    let entry = book.workloads.entry(key.clone()).or_default();
    if ask.decided || entry.proposed.is_empty() {
        entry.proposed =
            me.slots.iter().zip(&round.claims[0].slots).map(|((s, _, _), c)| (s.clone(), c.proposed)).collect();
    }
    if let Some(t) = ask.traffic {
        entry.has_traffic = t;
    }
    let status = ArbitrationStatus {
        time: round.at.clone(),
        slots: me
            .slots
            .iter()
            .enumerate()
            .map(|(s, (slot, p, _))| ArbitratedSlot {
                variant: slot.variant.clone(),
                pool: slot.pool.clone(),
                gpu_pool: round.pools[*p].name.clone(),
                held: round.claims[0].slots[s].held,
                proposed: round.claims[0].slots[s].proposed,
                granted: mine[s],
            })
            .collect(),
        message: words.join("; "),
        last_preempted: entry.last_preempted.clone(),
    };
    let targets = me.slots.iter().zip(&mine).map(|((s, _, _), r)| (s.clone(), *r)).collect();
    Outcome { grants: Grants { targets, events, status }, pools: round.pools.clone(), others: usage }
}

/// What the arbiter substituted for the asking workload, in words.
fn substitutions(round: &Round) -> Vec<String> {
    let mut out = Vec::new();
    for ev in &round.alloc.events {
        if let ArbiterEvent::Substituted { workload, from_slot, to_slot, missing, granted } = ev {
            if round.index[*workload] != 0 {
                continue;
            }
            let (from, to) = (&round.members[0].slots[*from_slot].0, &round.members[0].slots[*to_slot].0);
            out.push(format!(
                "{missing} replicas of {}/{} did not fit; granted {granted} of {}/{} instead",
                from.variant, from.pool, to.variant, to.pool
            ));
        }
    }
    out
}

/// The note of a `GpusRefused` Event: what was asked and granted, and why the pool had
/// no more.
fn refusal_note(pool: &PoolView, slot: &Slot, c: &SlotClaim, granted: u32, others: u32, gpus: u32) -> String {
    let free = pool.capacity.saturating_sub(others);
    let why = match (&pool.nodes_error, pool.pool.spec.capacity_gpus) {
        (Some(e), None) => format!("; {e}"),
        (None, None) if pool.allocatable == 0 => format!(
            "; no Node matched by its nodeSelector advertises {} (it has no capacityGpus)",
            pool.pool.spec.gpu_resource
        ),
        _ => String::new(),
    };
    format!(
        "asked {} replicas of {}/{}, granted {granted}: GPUPool {} has {} GPUs, {free} not held by other workloads \
         (of the same or higher priority), {gpus} per replica{why}",
        c.proposed, slot.variant, slot.pool, pool.name, pool.capacity
    )
}

/// The workload a preempted slot's GPUs went to, by name (`None`: the pool shrank).
fn preemptor(events: &[ArbiterEvent], index: &[usize], member: usize, slot: usize, claims: &[Claim]) -> Option<String> {
    events.iter().find_map(|e| match e {
        ArbiterEvent::Preempted { workload, slot: s, by, .. } if index[*workload] == member && *s == slot => {
            by.map(|b| claims[index[b]].workload.clone())
        }
        _ => None,
    })
}

/// Whether the arbiter served slot `slot` of the reconciled workload by a substitute.
fn substituted(events: &[ArbiterEvent], index: &[usize], slot: usize) -> bool {
    events.iter().any(|e| matches!(e, ArbiterEvent::Substituted { workload, from_slot, .. } if index[*workload] == 0 && *from_slot == slot))
}

/// After the reconcile's writes: remembers what was applied to the workload's shared
/// slots (by generation, see [`held`]) and writes the status of its GPUPools where it
/// changed. A failed status write is logged: the next reconcile writes it again.
pub(super) async fn settle(
    ctx: &Context,
    book: &mut Book,
    wl: &LLMWorkload,
    outcome: &Outcome,
    targets: &BTreeMap<Slot, u32>,
    ready: &BTreeMap<Slot, u32>,
) {
    let ns = wl.namespace().unwrap_or_default();
    let mine = member_slots(wl, &outcome.pools);
    for (slot, _, _) in &mine {
        let key = format!("{ns}/{}", deployment_name(&wl.name_any(), slot));
        if let (Some(r), Some(g)) = (targets.get(slot), execute::written_generation(ctx, &key)) {
            book.applied.insert(key, (*r, g));
        }
    }
    let api: Api<GPUPool> = Api::all(ctx.client.clone());
    for (p, view) in outcome.pools.iter().enumerate() {
        let (others, others_ready, n) = outcome.others[p];
        let (mut allocated, mut ready_gpus) = (others, others_ready);
        for (slot, q, gpus) in &mine {
            if *q == p {
                let r = targets.get(slot).copied().unwrap_or(0);
                allocated = allocated.saturating_add(r * gpus);
                ready_gpus = ready_gpus.saturating_add(ready.get(slot).copied().unwrap_or(0).min(r) * gpus);
            }
        }
        let status = GPUPoolStatus {
            observed_generation: view.pool.metadata.generation,
            nodes: view.nodes,
            allocatable_gpus: view.allocatable,
            capacity_gpus: view.capacity,
            allocated_gpus: allocated,
            pending_gpus: allocated.saturating_sub(ready_gpus),
            workloads: n + 1,
            summary: Some(GPUPoolSummary::of(&view.pool.spec)),
            conditions: view.pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
        };
        if view.pool.status.as_ref() == Some(&status) {
            continue;
        }
        let patch = serde_json::json!({ "status": status });
        match api.patch_status(&view.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => ctx.metrics.object_write("gpupool_status", "written"),
            Err(e) => tracing::warn!(pool = %view.name, error = %e, "cannot write the GPUPool's status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(replicas: i32, generation: i64) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w-small-shared", "generation": generation},
            "spec": {"replicas": replicas, "selector": {}, "template": {}}
        }))
        .expect("deployment")
    }

    #[test]
    fn what_this_process_wrote_counts_until_the_cache_has_caught_up() {
        let mut book = Book::default();
        let key = "ns/w-small-shared";
        // Nothing written by this process: the cache says.
        assert_eq!(held(&book, key, Some(&dep(3, 4))), 3);
        assert_eq!(held(&book, key, None), 0);
        // Scaled down to 1 (generation 5) while the cache still shows generation 4 with 3.
        book.applied.insert(key.into(), (1, 5));
        assert_eq!(held(&book, key, Some(&dep(3, 4))), 1, "a preemption not yet in the cache");
        // The cache caught up, or someone changed it since: the cache says.
        assert_eq!(held(&book, key, Some(&dep(1, 5))), 1);
        assert_eq!(held(&book, key, Some(&dep(6, 7))), 6);
        // Created by this process and not in the cache yet.
        assert_eq!(held(&book, key, None), 1);
    }

    #[test]
    fn member_slots_follow_the_variants_pools_and_the_pool_refs() {
        let wl: LLMWorkload = serde_json::from_value(serde_json::json!({
            "apiVersion": "llmos.dev/v1alpha1", "kind": "LLMWorkload", "metadata": {"name": "w", "namespace": "ns"},
            "spec": {
                "variants": [
                    {"name": "big", "model": "m", "image": "i", "gpusPerReplica": 4, "pools": ["a"]},
                    {"name": "small", "model": "m", "image": "i"}
                ],
                "gpuPools": [{"name": "own", "gpuType": "L4", "pricePerGpuHour": 1.0}],
                "poolRefs": [{"name": "a", "pool": "pool-a"}, {"name": "b", "pool": "pool-b"}],
                "policy": {"kind": "static"}
            }
        }))
        .expect("workload");
        let pool = |name: &str| PoolView {
            name: name.into(),
            pool: GPUPool::new(
                name,
                serde_json::from_value(serde_json::json!({"gpuType": "A100-80GB", "pricePerGpuHour": 1.0})).unwrap(),
            ),
            nodes: 0,
            allocatable: 0,
            capacity: 8,
            nodes_error: None,
        };
        // Only pool-b is arbitrated here: the slots of big (pool a only) are not in it.
        let got = member_slots(&wl, &[pool("pool-b")]);
        assert_eq!(got, vec![(Slot::new("small", "b"), 0, 1)]);
        let got = member_slots(&wl, &[pool("pool-a"), pool("pool-b")]);
        assert_eq!(
            got,
            vec![(Slot::new("big", "a"), 0, 4), (Slot::new("small", "a"), 0, 1), (Slot::new("small", "b"), 1, 1)]
        );
    }
}
