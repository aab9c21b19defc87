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
use super::{execute, key_of, kube_err, Context, Error, FIELD_MANAGER};

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

/// Arbitrates the shared pools of `wl` (as written; `resolved` with its poolRefs made
/// pools) for one reconcile whose plan proposes `proposal`; scales victims down first.
/// `traffic` is whether the tick saw arrivals (`None` without a tick).
#[allow(clippy::too_many_arguments)]
pub(super) async fn arbitrate_reconcile(
    ctx: &Context,
    book: &mut Book,
    wl: &LLMWorkload,
    resolved: &LLMWorkload,
    gpupools: &BTreeMap<String, GPUPool>,
    own: &[Deployment],
    proposal: &BTreeMap<Slot, u32>,
    tick_proposal: bool,
    traffic: Option<bool>,
    now: Timestamp,
) -> Result<Outcome, Error> {
    let key = key_of(wl);
    // The pools of this workload, with their capacities.
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
    let specs: BTreeMap<String, crate::crd::GPUPoolSpec> =
        gpupools.iter().map(|(n, p)| (n.clone(), p.spec.clone())).collect();

    // The members: this workload first, then every other that shares one of its pools.
    let mut members = vec![Member {
        key: key.clone(),
        wl: wl.clone(),
        resolved: Some(resolved.clone()),
        deployments: own.to_vec(),
        slots: member_slots(wl, &pools),
    }];
    let mut others = all_workloads(ctx).await?;
    others.sort_by_key(key_of);
    for other in others {
        let okey = key_of(&other);
        if okey == key || other.spec.pool_refs.is_empty() {
            continue;
        }
        let slots = member_slots(&other, &pools);
        if slots.is_empty() {
            continue;
        }
        let resolved = if other.metadata.deletion_timestamp.is_some() {
            None
        } else {
            resolve_pools(&other.spec, &specs).ok().map(|spec| LLMWorkload { spec, ..other.clone() })
        };
        let deployments = super::owned_deployments(ctx, &other).await?;
        members.push(Member { key: okey, wl: other, resolved, deployments, slots });
    }

    // Their claims.
    let held_of = |book: &Book, m: &Member, slot: &Slot| -> u32 {
        let ons = m.wl.namespace().unwrap_or_default();
        let dn = deployment_name(&m.wl.name_any(), slot);
        held(book, &format!("{ons}/{dn}"), m.deployments.iter().find(|d| d.name_any() == dn))
    };
    let mut claims = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        let entry = book.workloads.get(&m.key);
        let slots = m
            .slots
            .iter()
            .map(|(slot, p, gpus)| {
                let h = held_of(book, m, slot);
                let exists = m.deployments.iter().any(|d| d.name_any() == deployment_name(&m.wl.name_any(), slot));
                let proposed = if i == 0 && (tick_proposal || !exists) {
                    // Between ticks only a slot's first placement is a proposal; the
                    // others keep what they hold (the cache may lag behind a preemption).
                    proposal.get(slot).copied().unwrap_or(h)
                } else if i == 0 {
                    h.min(proposal.get(slot).copied().unwrap_or(h))
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
        let has_traffic = if i == 0 { traffic.or(entry.map(|e| e.has_traffic)) } else { entry.map(|e| e.has_traffic) };
        claims.push(Claim {
            workload: m.key.clone(),
            priority: m.wl.spec.scheduling.priority,
            guaranteed_gpus: m.wl.spec.scheduling.guaranteed_gpus,
            has_traffic: has_traffic.unwrap_or(true),
            slots,
        });
    }
    // A workload that cannot be scaled down by another's reconcile keeps what it holds:
    // it is left out of the claims and its GPUs out of the capacities.
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

    // Victims first: every other workload granted less than it holds is scaled down.
    let at = now.to_string();
    let mut after: Vec<Vec<u32>> = granted.clone();
    let mut taken_from: Vec<String> = Vec::new();
    for i in 1..members.len() {
        let m = &members[i];
        let Some(victim) = &m.resolved else { continue };
        for (s, (slot, p, gpus)) in m.slots.iter().enumerate() {
            let (h, g) = (claims[i].slots[s].held, granted[i][s]);
            if g >= h {
                continue;
            }
            after[i][s] = h;
            let Some(dep) = desired::deployment(victim, slot, g) else { continue };
            let vns = victim.namespace().unwrap_or_default();
            let dn = dep.name_any();
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &vns);
            match api.patch(&dn, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&dep)).await {
                Ok(out) => {
                    after[i][s] = g;
                    if let Some(generation) = out.metadata.generation {
                        book.applied.insert(format!("{vns}/{dn}"), (g, generation));
                    }
                    ctx.metrics.object_write("deployment", "written");
                }
                Err(e) => {
                    tracing::warn!(workload = %m.key, deployment = %dn, error = %e, "cannot scale a preempted slot down");
                    continue;
                }
            }
            let by = preemptor(&alloc.events, &index, i, s, &claims);
            let gpus_taken = (h - g) * gpus;
            let pool = &pools[*p].name;
            let note = match &by {
                Some(b) => format!(
                    "GPUPool {pool}: {} of {} replicas of {}/{} ({gpus_taken} GPUs) preempted for {b} (priority {} > {})",
                    h - g,
                    h,
                    slot.variant,
                    slot.pool,
                    claims.iter().find(|c| &c.workload == b).map_or(0, |c| c.priority),
                    claims[i].priority
                ),
                None => format!(
                    "GPUPool {pool}: {} of {} replicas of {}/{} ({gpus_taken} GPUs) given back: the pool's capacity \
                     ({} GPUs) is below what its workloads held",
                    h - g,
                    h,
                    slot.variant,
                    slot.pool,
                    pools[*p].capacity
                ),
            };
            let ev = PlannedEvent::warning(EventReason::Preempted, "Preempt", note);
            execute::publish(ctx, victim, &ev).await;
            let e = book.workloads.entry(m.key.clone()).or_default();
            e.last_preempted =
                Some(PreemptionStatus { time: at.clone(), by: by.clone().unwrap_or_default(), gpus: gpus_taken });
            if by.as_deref() == Some(key.as_str()) {
                taken_from.push(format!(
                    "{gpus_taken} GPUs of GPUPool {pool} from {} (priority {})",
                    m.key, claims[i].priority
                ));
            }
        }
    }

    // This workload's grants, within what the pools have free after the victims' writes.
    let mut mine = granted[0].clone();
    let mut used_by_others = vec![0u32; pools.len()];
    let mut ready_by_others = vec![0u32; pools.len()];
    let mut workloads_in = vec![0u32; pools.len()];
    for (i, m) in members.iter().enumerate().skip(1) {
        let mut seen = vec![false; pools.len()];
        for (s, (slot, p, gpus)) in m.slots.iter().enumerate() {
            used_by_others[*p] = used_by_others[*p].saturating_add(after[i][s] * gpus);
            let dn = deployment_name(&m.wl.name_any(), slot);
            let ready = m.deployments.iter().find(|d| d.name_any() == dn).map_or(0, ready_replicas);
            ready_by_others[*p] = ready_by_others[*p].saturating_add(ready.min(after[i][s]) * gpus);
            seen[*p] = true;
        }
        for (p, s) in seen.iter().enumerate() {
            workloads_in[p] += u32::from(*s);
        }
    }
    for (p, pool) in pools.iter().enumerate() {
        let free = pool.capacity.saturating_sub(used_by_others[p]);
        let slots: Vec<usize> = (0..mine.len()).filter(|&s| members[0].slots[s].1 == p).collect();
        let mut want: u32 = slots.iter().map(|&s| mine[s] * members[0].slots[s].2).sum();
        for &s in slots.iter().rev() {
            let floor = claims[0].slots[s].held.min(claims[0].slots[s].proposed);
            while want > free && mine[s] > floor {
                mine[s] -= 1;
                want = want.saturating_sub(members[0].slots[s].2);
            }
        }
    }

    // Events and status of this workload.
    let me = &members[0];
    let mut events = Vec::new();
    let mut words: Vec<String> = Vec::new();
    if !taken_from.is_empty() {
        let note = format!("took {} (they were scaled down first)", taken_from.join(", "));
        words.push(note.clone());
        events.push(PlannedEvent::normal(EventReason::Preempting, "Preempt", note));
    }
    for (s, (slot, p, gpus)) in me.slots.iter().enumerate() {
        let c = &claims[0].slots[s];
        let pool = &pools[*p];
        if mine[s] < c.proposed && !substituted(&alloc.events, &index, s) {
            let free = pool.capacity.saturating_sub(used_by_others[*p]);
            let why = match (&pool.nodes_error, pool.pool.spec.capacity_gpus) {
                (Some(e), None) => format!("; {e}"),
                (None, None) if pool.allocatable == 0 => format!(
                    "; no Node matched by its nodeSelector advertises {} (it has no capacityGpus)",
                    pool.pool.spec.gpu_resource
                ),
                _ => String::new(),
            };
            let note = format!(
                "asked {} replicas of {}/{}, granted {}: GPUPool {} has {} GPUs, {free} not held by other workloads \
                 (of the same or higher priority), {gpus} per replica{why}",
                c.proposed, slot.variant, slot.pool, mine[s], pool.name, pool.capacity
            );
            words.push(note.clone());
            events.push(PlannedEvent::warning(
                EventReason::GpusRefused,
                format!("Refuse {}/{}", slot.variant, slot.pool),
                note,
            ));
        }
        if mine[s] < c.held.min(c.proposed) {
            let by = preemptor(&alloc.events, &index, 0, s, &claims);
            let note = format!(
                "GPUPool {}: {} replicas of {}/{} preempted {}",
                pool.name,
                c.held.min(c.proposed) - mine[s],
                slot.variant,
                slot.pool,
                by.as_ref().map_or("(the pool's capacity is below what its workloads held)".to_string(), |b| format!(
                    "for {b}"
                ))
            );
            words.push(note.clone());
            events.push(PlannedEvent::warning(EventReason::Preempted, "Preempt", note));
            let e = book.workloads.entry(key.clone()).or_default();
            e.last_preempted = Some(PreemptionStatus {
                time: at.clone(),
                by: by.unwrap_or_default(),
                gpus: (c.held.min(c.proposed) - mine[s]) * gpus,
            });
        }
    }
    for ev in &alloc.events {
        if let ArbiterEvent::Substituted { workload, from_slot, to_slot, missing, granted } = ev {
            if index[*workload] != 0 {
                continue;
            }
            let (from, to) = (&me.slots[*from_slot].0, &me.slots[*to_slot].0);
            let note = format!(
                "{missing} replicas of {}/{} did not fit; granted {granted} of {}/{} instead",
                from.variant, from.pool, to.variant, to.pool
            );
            words.push(note.clone());
            events.push(PlannedEvent::normal(EventReason::Substituted, "Substitute", note));
        }
    }
    let entry = book.workloads.entry(key.clone()).or_default();
    if tick_proposal || entry.proposed.is_empty() {
        entry.proposed = me.slots.iter().zip(&claims[0].slots).map(|((s, _, _), c)| (s.clone(), c.proposed)).collect();
    }
    if let Some(t) = traffic {
        entry.has_traffic = t;
    }
    let status = ArbitrationStatus {
        time: at,
        slots: me
            .slots
            .iter()
            .enumerate()
            .map(|(s, (slot, p, _))| ArbitratedSlot {
                variant: slot.variant.clone(),
                pool: slot.pool.clone(),
                gpu_pool: pools[*p].name.clone(),
                held: claims[0].slots[s].held,
                proposed: claims[0].slots[s].proposed,
                granted: mine[s],
            })
            .collect(),
        message: words.join("; "),
        last_preempted: entry.last_preempted.clone(),
    };
    let targets = me.slots.iter().zip(&mine).map(|((s, _, _), r)| (s.clone(), *r)).collect();
    let others = (0..pools.len()).map(|p| (used_by_others[p], ready_by_others[p], workloads_in[p])).collect();
    Ok(Outcome { grants: Grants { targets, events, status }, pools, others })
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
