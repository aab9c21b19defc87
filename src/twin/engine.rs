//! One replica's inference engine, scheduled the way vLLM schedules.
//!
//! - **Iteration-level continuous batching.** Each iteration takes every running sequence
//!   (one decode token each, or the next prompt chunk), then admits waiting sequences in
//!   arrival order while the token budget `max_num_batched_tokens`, the sequence limit
//!   `max_num_seqs` and free KV blocks allow. With `enable_chunked_prefill` a prompt is
//!   split across iterations to fit the budget; without it a prompt is admitted only whole.
//! - **Paged KV cache.** Memory is `block_size`-token blocks; capacity is
//!   `gpu_memory_utilization × GPU memory × TP − weights − activation reserve`, divided by
//!   KV bytes per block. A sequence holds `ceil(tokens / block_size)` blocks.
//! - **Preemption by recompute.** When a running sequence needs a block and none is free,
//!   the most recently admitted running sequence is preempted: its blocks are freed and it
//!   goes back to the front of the queue, to prefill its prompt and the tokens generated so
//!   far again.
//! - **Prefix caching** (`enable_prefix_caching`): prompts carry block hashes (Mooncake:
//!   one per 512 tokens). Full prompt units are kept in a cache keyed by hash after their
//!   prefill; a new sequence whose leading hashes are cached shares those blocks and skips
//!   their prefill. Unreferenced cached units are evicted least-recently-used first when
//!   blocks run out. Hit tokens are counted.
//! - **Decode jumps.** When an iteration is decode-only and nothing can join the batch, the
//!   batch stays the same until its first sequence finishes; the engine advances all those
//!   steps at once, with their total time from the perf model's affine decode cost. An
//!   arrival during a jump cuts it short at the end of the step in progress.

use crate::metrics::scrape::PodSample;
use crate::metrics::vllm::Field;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::histogram::{Histogram, E2E_BUCKETS, ITL_BUCKETS, TOKEN_BUCKETS, TTFT_BUCKETS};
use super::perf::{BatchShape, CpuCosts, PerfModel, CPU_V0, CPU_V1, CPU_V1_ASYNC};
use super::time::Nanos;

/// Which vLLM engine the twin schedules like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// vLLM's V1 engine (the default since vLLM 0.8): chunked prefill always on, each
    /// step's token budget goes to running sequences (decodes) first, then to waiting
    /// prompts; API server, tokenisation and detokenisation run in another process, so the
    /// engine loop's CPU time per step is small. With `async_scheduling` the next step is
    /// scheduled while the GPU runs the current one.
    #[default]
    V1,
    /// vLLM's V0 engine (up to 0.7): without chunked prefill a step that admits new prompts
    /// runs only those prefills and every decode waits (prefill-first); with
    /// `num_scheduler_steps > 1` (multi-step scheduling, 0.6) a decode batch runs that many
    /// steps per scheduling round, tokens are streamed at the end of the round, and new
    /// prompts join only between rounds. Output processing and detokenisation run in the
    /// engine loop.
    V0,
}

/// Engine knobs, named as vLLM names them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Which vLLM engine to schedule like (`v1`, the default, or `v0`).
    pub scheduler: Scheduler,
    /// V1: schedule the next step while the GPU runs this one (vLLM `--async-scheduling`).
    pub async_scheduling: bool,
    /// V0: decode steps per scheduling round (vLLM 0.6 `--num-scheduler-steps`).
    pub num_scheduler_steps: u32,
    /// Per-request time outside the engine loop, seconds, tokenisation included; absent
    /// means the scheduler's fitted value ([`EngineConfig::cpu_costs`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_overhead_s: Option<f64>,
    /// Output tokens per second the API server can stream (0: unlimited); absent means the
    /// scheduler's fitted value ([`EngineConfig::cpu_costs`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_tokens_per_s: Option<f64>,
    /// Token budget of one iteration.
    pub max_num_batched_tokens: u32,
    /// Most sequences in one iteration.
    pub max_num_seqs: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// Fraction of GPU memory the engine may use (weights + KV + activations).
    pub gpu_memory_utilization: f64,
    /// Memory kept for activations and CUDA graphs, GiB per GPU.
    pub activation_reserve_gib: f64,
    /// Split long prompts across iterations (always on with the V1 scheduler).
    pub enable_chunked_prefill: bool,
    /// Share KV blocks of common prompt prefixes (needs hash ids in the trace).
    pub enable_prefix_caching: bool,
    /// Tokens per prefix hash id of the trace (Mooncake: 512); a multiple of `block_size`.
    pub prefix_block_tokens: u32,
    /// Longest prompt + output accepted; absent means the model's context length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            scheduler: Scheduler::V1,
            async_scheduling: true,
            num_scheduler_steps: 1,
            request_overhead_s: None,
            stream_tokens_per_s: None,
            max_num_batched_tokens: 8192,
            max_num_seqs: 256,
            block_size: 16,
            gpu_memory_utilization: 0.9,
            activation_reserve_gib: 2.0,
            enable_chunked_prefill: true,
            enable_prefix_caching: false,
            prefix_block_tokens: 512,
            max_model_len: None,
        }
    }
}

impl EngineConfig {
    /// Whether prompts are split across iterations: always with V1, as configured with V0.
    pub fn chunked_prefill(&self) -> bool {
        self.scheduler == Scheduler::V1 || self.enable_chunked_prefill
    }

    /// The engine CPU costs of this configuration: its scheduler's fitted costs, with V0's
    /// multi-step per-step costs paid once per round (spread over its steps here), and
    /// `stream_tokens_per_s` / `request_overhead_s` where set.
    pub fn cpu_costs(&self) -> CpuCosts {
        let mut c = match self.scheduler {
            Scheduler::V1 if self.async_scheduling => CPU_V1_ASYNC,
            Scheduler::V1 => CPU_V1,
            Scheduler::V0 => CPU_V0,
        };
        if self.scheduler == Scheduler::V0 && self.num_scheduler_steps > 1 {
            let k = self.num_scheduler_steps as f64;
            c.iter_s /= k;
            c.per_seq_s /= k;
        }
        if let Some(r) = self.stream_tokens_per_s {
            c.stream_s_per_token = if r > 0.0 { 1.0 / r } else { 0.0 };
        }
        if let Some(r) = self.request_overhead_s {
            c.request_s = r;
            c.per_prompt_token_s = 0.0;
        }
        c
    }
}

/// A request inside an engine.
#[derive(Clone, Debug)]
pub struct Seq {
    /// Twin-wide request id.
    pub id: u64,
    /// Arrival at the workload.
    pub arrival: Nanos,
    /// Prompt tokens.
    pub input: u32,
    /// Output tokens to generate.
    pub output: u32,
    /// Prefix hashes.
    pub hash_ids: Vec<u32>,
    computed: u32,
    generated: u32,
    blocks: u32,
    held: Vec<u32>,
    chunk: u32,
    first_sched: Option<Nanos>,
    first_token: Option<Nanos>,
    preemptions: u32,
    cached_tokens: u32,
}

impl Seq {
    /// A new request.
    pub fn new(id: u64, arrival: Nanos, input: u32, output: u32, hash_ids: Vec<u32>) -> Seq {
        Seq {
            id,
            arrival,
            input,
            output: output.max(1),
            hash_ids,
            computed: 0,
            generated: 0,
            blocks: 0,
            held: Vec::new(),
            chunk: 0,
            first_sched: None,
            first_token: None,
            preemptions: 0,
            cached_tokens: 0,
        }
    }
}

/// A finished request's timings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Finished {
    /// Request id.
    pub id: u64,
    /// Arrival.
    pub arrival: Nanos,
    /// First scheduled (end of queueing).
    pub first_sched: Nanos,
    /// First token.
    pub first_token: Nanos,
    /// Last token.
    pub finish: Nanos,
    /// Prompt tokens.
    pub input: u32,
    /// Output tokens.
    pub output: u32,
    /// Times preempted.
    pub preemptions: u32,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: u32,
}

/// Cumulative counters and histograms in vLLM's terms (for the Prometheus view).
#[derive(Clone, Debug, Default)]
pub struct EngineCounters {
    /// `vllm:request_success_total`.
    pub request_success: u64,
    /// `vllm:prompt_tokens_total`.
    pub prompt_tokens: u64,
    /// `vllm:generation_tokens_total`.
    pub generation_tokens: u64,
    /// `vllm:time_to_first_token_seconds`.
    pub ttft: Histogram,
    /// `vllm:inter_token_latency_seconds`.
    pub itl: Histogram,
    /// `vllm:e2e_request_latency_seconds`.
    pub e2e: Histogram,
    /// `vllm:request_prompt_tokens` (per finished request).
    pub request_prompt_tokens: Histogram,
    /// `vllm:request_generation_tokens` (per finished request).
    pub request_generation_tokens: Histogram,
    /// Preemptions.
    pub preemptions: u64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_hits: u64,
    /// Time spent running iterations.
    pub busy_ns: u64,
}

#[derive(Clone, Copy, Debug)]
struct CacheEntry {
    refs: u32,
    stamp: u64,
}

#[derive(Clone, Copy, Debug)]
struct Jump {
    /// A multi-step round: runs to the end even when requests arrive.
    fixed: bool,
    steps: u32,
    n: u64,
    ctx0: u64,
    a: f64,
    b: f64,
}

impl Jump {
    fn elapsed(&self, m: u32) -> Nanos {
        let m = m as f64;
        Nanos::from_secs_f64(m * self.a + self.b * (m * self.ctx0 as f64 + self.n as f64 * m * (m - 1.0) / 2.0))
            .max(Nanos(m as u64))
    }
}

/// One replica's engine.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    perf: Arc<dyn PerfModel>,
    total_blocks: u32,
    free_blocks: u32,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    busy: bool,
    iter_start: Nanos,
    iter_end: Nanos,
    jump: Option<Jump>,
    affine: Vec<Option<(f64, f64)>>,
    cache: HashMap<u32, CacheEntry>,
    lru: BTreeMap<u64, u32>,
    stamp: u64,
    unit_blocks: u32,
    cpu: CpuCosts,
    /// When the API server has streamed every token so far (see [`CpuCosts::stream_s_per_token`]).
    stream_free: Nanos,
    /// Counters for reports and the Prometheus view.
    pub counters: EngineCounters,
}

fn blocks_for(tokens: u32, bs: u32) -> u32 {
    tokens.div_ceil(bs)
}

impl Engine {
    /// An idle engine with `total_blocks` KV blocks.
    pub fn new(cfg: EngineConfig, perf: Arc<dyn PerfModel>, total_blocks: u32) -> Engine {
        let unit_blocks = (cfg.prefix_block_tokens / cfg.block_size.max(1)).max(1);
        let cpu = cfg.cpu_costs();
        Engine {
            cpu,
            stream_free: Nanos::ZERO,
            affine: vec![None; cfg.max_num_seqs as usize + 1],
            cfg,
            perf,
            total_blocks,
            free_blocks: total_blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
            busy: false,
            iter_start: Nanos::ZERO,
            iter_end: Nanos::ZERO,
            jump: None,
            cache: HashMap::new(),
            lru: BTreeMap::new(),
            stamp: 0,
            unit_blocks,
            counters: EngineCounters {
                ttft: Histogram::fixed(TTFT_BUCKETS),
                itl: Histogram::fixed(ITL_BUCKETS),
                e2e: Histogram::fixed(E2E_BUCKETS),
                request_prompt_tokens: Histogram::fixed(TOKEN_BUCKETS),
                request_generation_tokens: Histogram::fixed(TOKEN_BUCKETS),
                ..Default::default()
            },
        }
    }

    /// KV blocks in all.
    pub fn total_blocks(&self) -> u32 {
        self.total_blocks
    }
    /// KV blocks in use by sequences (cached-but-unreferenced blocks count as free, as in vLLM).
    pub fn used_blocks(&self) -> u32 {
        self.total_blocks - self.free_blocks - self.lru.len() as u32 * self.unit_blocks
    }
    /// What this engine's `/metrics` exposes now, as the parser reads it: vLLM's gauges,
    /// counters and histograms (cumulative buckets with vLLM's boundaries).
    pub fn sample(&self) -> PodSample {
        let c = &self.counters;
        let mut s = PodSample::default();
        s.gauges.insert(Field::WaitingRequests, self.num_waiting() as f64);
        s.gauges.insert(Field::RunningRequests, self.num_running() as f64);
        s.gauges.insert(Field::KvCacheUsage, self.kv_usage());
        s.counters.insert(Field::RequestSuccess, c.request_success as f64);
        s.counters.insert(Field::PromptTokens, c.prompt_tokens as f64);
        s.counters.insert(Field::GenerationTokens, c.generation_tokens as f64);
        s.counters.insert(Field::Preemptions, c.preemptions as f64);
        s.histograms.insert(Field::TimeToFirstToken, c.ttft.cumulative());
        s.histograms.insert(Field::TimePerOutputToken, c.itl.cumulative());
        s.histograms.insert(Field::E2eLatency, c.e2e.cumulative());
        s.histograms.insert(Field::RequestPromptTokens, c.request_prompt_tokens.cumulative());
        s.histograms.insert(Field::RequestGenerationTokens, c.request_generation_tokens.cumulative());
        s
    }

    /// `vllm:kv_cache_usage_perc`, 0..=1.
    pub fn kv_usage(&self) -> f64 {
        if self.total_blocks == 0 {
            0.0
        } else {
            self.used_blocks() as f64 / self.total_blocks as f64
        }
    }
    /// `vllm:num_requests_waiting`.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    /// `vllm:num_requests_running`.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    /// Requests in the engine.
    pub fn outstanding(&self) -> usize {
        self.waiting.len() + self.running.len()
    }
    /// Whether an iteration is in progress.
    pub fn is_busy(&self) -> bool {
        self.busy
    }
    /// End of the iteration in progress.
    pub fn iteration_end(&self) -> Option<Nanos> {
        self.busy.then_some(self.iter_end)
    }
    /// Largest sequence (prompt + output tokens) that fits the KV cache.
    pub fn max_seq_tokens(&self) -> u64 {
        self.total_blocks as u64 * self.cfg.block_size as u64
    }

    /// Checks the block accounting (tests and debug builds).
    pub fn check_invariants(&self) -> Result<(), super::TwinError> {
        let broken = |message: String| Err(super::TwinError::Invariant { part: "engine".into(), message });
        let private: u64 = self.running.iter().map(|s| s.blocks as u64).sum::<u64>()
            + self.waiting.iter().map(|s| s.blocks as u64).sum::<u64>();
        let cached = self.cache.len() as u64 * self.unit_blocks as u64;
        if self.free_blocks as u64 + private + cached != self.total_blocks as u64 {
            return broken(format!(
                "blocks: free {} + private {private} + cached {cached} != total {}",
                self.free_blocks, self.total_blocks
            ));
        }
        if self.running.len() > self.cfg.max_num_seqs as usize {
            return broken("more running than max_num_seqs".into());
        }
        Ok(())
    }

    fn alloc(&mut self, n: u32) -> bool {
        while self.free_blocks < n {
            let Some((&stamp, &h)) = self.lru.iter().next() else { return false };
            self.lru.remove(&stamp);
            self.cache.remove(&h);
            self.free_blocks += self.unit_blocks;
        }
        self.free_blocks -= n;
        true
    }

    fn evictable_blocks(&self) -> u32 {
        self.lru.len() as u32 * self.unit_blocks
    }

    fn release(&mut self, s: &mut Seq) {
        self.free_blocks += s.blocks;
        s.blocks = 0;
        for h in s.held.drain(..) {
            if let Some(e) = self.cache.get_mut(&h) {
                e.refs -= 1;
                if e.refs == 0 {
                    self.stamp += 1;
                    e.stamp = self.stamp;
                    self.lru.insert(self.stamp, h);
                }
            }
        }
        s.computed = 0;
        s.chunk = 0;
    }

    fn unit_tokens(&self) -> u32 {
        self.unit_blocks * self.cfg.block_size
    }

    fn private_tokens(&self, s: &Seq) -> u32 {
        s.computed - s.held.len() as u32 * self.unit_tokens()
    }

    /// Looks the sequence's leading prefix units up in the cache and takes references.
    fn match_prefix(&mut self, s: &mut Seq) {
        if !self.cfg.enable_prefix_caching || s.hash_ids.is_empty() || s.computed != 0 {
            return;
        }
        let unit = self.unit_tokens();
        let total = s.input + s.generated;
        let max_units = ((s.input / unit) as usize).min(s.hash_ids.len()).min(((total - 1) / unit) as usize);
        self.counters.prefix_queries += s.input as u64;
        for j in 0..max_units {
            let h = s.hash_ids[j];
            let Some(e) = self.cache.get_mut(&h) else { break };
            if e.refs == 0 {
                self.lru.remove(&e.stamp);
            }
            e.refs += 1;
            s.held.push(h);
        }
        s.computed = s.held.len() as u32 * unit;
        s.cached_tokens += s.computed;
        self.counters.prefix_hits += s.computed as u64;
    }

    /// Puts the sequence's fully prefilled prompt units into the cache.
    fn insert_prefix(&mut self, s: &mut Seq) {
        if !self.cfg.enable_prefix_caching || s.hash_ids.is_empty() {
            return;
        }
        let unit = self.unit_tokens();
        let covered = ((s.computed.min(s.input) / unit) as usize).min(s.hash_ids.len());
        while s.held.len() < covered {
            let h = s.hash_ids[s.held.len()];
            debug_assert!(s.blocks >= self.unit_blocks);
            s.blocks -= self.unit_blocks;
            match self.cache.get_mut(&h) {
                Some(e) => {
                    // Someone cached it meanwhile: share theirs, free our copy.
                    if e.refs == 0 {
                        self.lru.remove(&e.stamp);
                    }
                    e.refs += 1;
                    self.free_blocks += self.unit_blocks;
                }
                None => {
                    self.cache.insert(h, CacheEntry { refs: 1, stamp: 0 });
                }
            }
            s.held.push(h);
        }
    }

    fn blocks_needed(&self, s: &Seq, chunk: u32) -> u32 {
        blocks_for(self.private_tokens(s) + chunk, self.cfg.block_size).saturating_sub(s.blocks)
    }

    /// Time a request spends outside the engine loop before it can be scheduled (HTTP,
    /// chat template, tokenisation), seconds.
    pub fn front_s(&self, input: u32) -> f64 {
        self.request_s() + self.tokenize_s(input)
    }

    /// The per-request part of [`Engine::front_s`] (HTTP, chat template), seconds.
    pub fn request_s(&self) -> f64 {
        self.cpu.request_s
    }

    /// The tokenisation part of [`Engine::front_s`] for a prompt of `input` tokens, seconds.
    /// vLLM's API server tokenises one prompt at a time (`OpenAIServing` runs the tokenizer
    /// on a `ThreadPoolExecutor(max_workers=1)`; the 0.6 server in its event loop), so
    /// requests sent together reach the engine in the order they were sent, each after
    /// the prompts before it.
    pub fn tokenize_s(&self, input: u32) -> f64 {
        self.cpu.per_prompt_token_s * input as f64
    }

    /// Adds a request to the queue (call [`Engine::start_iteration`] or [`Engine::interrupt`] after).
    ///
    /// The request reaches the scheduler at the time it is enqueued; its latencies are
    /// counted from [`Engine::front_s`] earlier, the time the client sent it. (A constant
    /// delay in front of a queue shifts every arrival alike, so this is the same as delaying
    /// the request; the per-token part is small next to the gaps between arrivals.)
    pub fn enqueue(&mut self, mut s: Seq) {
        let front = Nanos::from_secs_f64(self.front_s(s.input));
        s.arrival = Nanos(s.arrival.0.saturating_sub(front.0));
        self.waiting.push_back(s);
    }

    /// Adds a request whose `arrival` is already the time the client sent it (the caller
    /// has modelled the way in front of the engine, e.g. the tokeniser queue of
    /// [`Engine::tokenize_s`]).
    pub fn enqueue_sent(&mut self, s: Seq) {
        self.waiting.push_back(s);
    }

    fn multi_step(&self) -> bool {
        self.cfg.scheduler == Scheduler::V0 && self.cfg.num_scheduler_steps > 1
    }

    /// If a decode jump is in progress, cuts it at the end of the step in progress at `now`.
    /// Returns the new iteration end when it changed.
    pub fn interrupt(&mut self, now: Nanos) -> Option<Nanos> {
        let j = self.jump?;
        if !self.busy || j.steps <= 1 || j.fixed {
            return None;
        }
        let el = now.since(self.iter_start);
        let (mut lo, mut hi) = (0u32, j.steps); // largest m with elapsed(m) <= el
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if j.elapsed(mid) <= el {
                lo = mid
            } else {
                hi = mid - 1
            }
        }
        let keep = (lo + 1).min(j.steps);
        if keep >= j.steps {
            return None;
        }
        // Give back blocks reserved for the steps that will not run.
        let bs = self.cfg.block_size;
        let unit = self.unit_tokens();
        let mut freed = 0;
        for s in self.running.iter_mut() {
            let priv_tokens = s.computed - s.held.len() as u32 * unit;
            let need = blocks_for(priv_tokens + keep, bs);
            freed += s.blocks - need;
            s.blocks = need;
        }
        self.free_blocks += freed;
        self.jump = Some(Jump { steps: keep, ..j });
        self.iter_end = self.iter_start.plus(j.elapsed(keep));
        Some(self.iter_end)
    }

    /// Schedules the next iteration at `now` if idle. Returns its end time, or `None` when
    /// there is nothing to do.
    pub fn start_iteration(&mut self, now: Nanos) -> Option<Nanos> {
        if self.busy {
            return Some(self.iter_end);
        }
        if self.running.is_empty() && self.waiting.is_empty() {
            return None;
        }
        let mut budget = self.cfg.max_num_batched_tokens;
        let (preempted, admitted) = if !self.cfg.chunked_prefill() {
            // Without chunked prefill (V0 only): new prompts first, alone in their step.
            if self.admit_waiting(now, &mut budget) {
                (false, true)
            } else {
                (self.schedule_running(&mut budget), false)
            }
        } else {
            let preempted = self.schedule_running(&mut budget);
            (preempted, !preempted && self.admit_waiting(now, &mut budget))
        };
        let (shape, all_decode, min_left) = self.batch_shape();
        if shape.prefill_tokens + shape.decode_seqs == 0 {
            // Nothing could be scheduled (cannot happen when a single request fits the cache).
            return None;
        }
        self.busy = true;
        self.iter_start = now;
        if all_decode && !preempted && !admitted && (min_left > 1 || self.multi_step()) {
            if let Some(end) = self.decode_jump(now, &shape, min_left) {
                return Some(end);
            }
        }
        self.jump = None;
        let d = Nanos::from_secs_f64(self.perf.iteration_s(&shape)).max(Nanos(1));
        self.iter_end = now.plus(d);
        Some(self.iter_end)
    }

    /// Gives the running sequences their chunks of this iteration's token budget, in
    /// order, preempting from the back when the KV cache is full; true if any was preempted.
    fn schedule_running(&mut self, budget: &mut u32) -> bool {
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() {
            if *budget == 0 {
                self.running[i].chunk = 0;
                i += 1;
                continue;
            }
            let s = &self.running[i];
            let need = s.input + s.generated - s.computed;
            let chunk = need.min(*budget);
            let nb = self.blocks_needed(s, chunk);
            let mut self_preempted = false;
            while !self.alloc(nb) {
                preempted = true;
                let victim_idx = self.running.len() - 1;
                let mut v = self.running.remove(victim_idx);
                self.release(&mut v);
                v.preemptions += 1;
                self.counters.preemptions += 1;
                self.waiting.push_front(v);
                if victim_idx == i {
                    self_preempted = true;
                    break;
                }
            }
            if self_preempted {
                break;
            }
            let s = &mut self.running[i];
            s.blocks += nb;
            s.chunk = chunk;
            *budget -= chunk;
            i += 1;
        }
        preempted
    }

    /// Admits waiting sequences while the batch, the budget and the KV cache allow; true
    /// if any was admitted.
    fn admit_waiting(&mut self, now: Nanos, budget: &mut u32) -> bool {
        let mut admitted = false;
        while self.running.len() < self.cfg.max_num_seqs as usize && *budget > 0 {
            let Some(mut s) = self.waiting.pop_front() else { break };
            self.match_prefix(&mut s);
            let need = s.input + s.generated - s.computed;
            let fits_budget = self.cfg.chunked_prefill() || need <= *budget;
            let chunk = need.min(*budget);
            let nb = self.blocks_needed(&s, chunk);
            // V0 keeps 1 % of the blocks free for running sequences to grow into.
            let watermark = if self.cfg.scheduler == Scheduler::V0 { self.total_blocks / 100 } else { 0 };
            let room = self.free_blocks + self.evictable_blocks() >= nb + watermark;
            if !fits_budget || !room || !self.alloc(nb) {
                self.release(&mut s);
                self.waiting.push_front(s);
                break;
            }
            s.blocks += nb;
            s.chunk = chunk;
            s.first_sched.get_or_insert(now);
            *budget -= chunk;
            self.running.push(s);
            admitted = true;
        }
        admitted
    }

    /// The shape of the batch as scheduled, whether it is decode-only, and the fewest
    /// tokens any decoding sequence has left.
    fn batch_shape(&self) -> (BatchShape, bool, u32) {
        let mut shape = BatchShape::default();
        let mut all_decode = true;
        let mut min_left = u32::MAX;
        for s in &self.running {
            if s.chunk == 0 {
                all_decode = false;
                continue;
            }
            let total = s.input + s.generated;
            if s.computed > 0 && total - s.computed == 1 && s.generated > 0 {
                shape.decode_seqs += 1;
                shape.decode_ctx_tokens += s.computed as u64;
                shape.logit_seqs += 1;
                min_left = min_left.min(s.output - s.generated);
            } else {
                all_decode = false;
                shape.prefill_tokens += s.chunk as u64;
                shape.prefill_attn_pairs += s.chunk as f64 * (s.computed as f64 + (s.chunk as f64 + 1.0) / 2.0);
                shape.prefill_past_tokens += s.computed as u64;
                if s.computed + s.chunk == total {
                    shape.logit_seqs += 1;
                }
            }
        }
        (shape, all_decode, min_left)
    }

    /// A decode jump: the batch stays the same until the first sequence finishes, or KV
    /// runs out; computed in one step. `None` when it would be a single iteration.
    fn decode_jump(&mut self, now: Nanos, shape: &BatchShape, min_left: u32) -> Option<Nanos> {
        let n = shape.decode_seqs;
        let free = self.free_blocks + self.evictable_blocks();
        let bs = self.cfg.block_size;
        let unit = self.unit_tokens();
        // A sequence advances k tokens, or to its end if that comes first (multi-step
        // rounds run all their steps; a sequence that ends early waits for the round).
        let extra = |k: u32, run: &[Seq]| -> u64 {
            run.iter()
                .map(|s| {
                    let adv = k.min(s.output - s.generated);
                    (blocks_for(s.computed - s.held.len() as u32 * unit + adv, bs) - s.blocks) as u64
                })
                .sum()
        };
        let cap = if self.multi_step() { self.cfg.num_scheduler_steps } else { min_left };
        let (mut lo, mut hi) = (1u32, cap);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if extra(mid, &self.running) <= free as u64 {
                lo = mid
            } else {
                hi = mid - 1
            }
        }
        let k = lo;
        if k > 1 {
            let need = extra(k, &self.running) as u32;
            let ok = self.alloc(need);
            debug_assert!(ok);
            for s in self.running.iter_mut() {
                let adv = k.min(s.output - s.generated);
                s.blocks = blocks_for(s.computed - s.held.len() as u32 * unit + adv, bs);
            }
            let (a, b) = self.affine_for(n);
            let j = Jump { fixed: self.multi_step(), steps: k, n, ctx0: shape.decode_ctx_tokens, a, b };
            self.jump = Some(j);
            self.iter_end = now.plus(j.elapsed(k));
            return Some(self.iter_end);
        }
        None
    }

    fn affine_for(&mut self, n: u64) -> (f64, f64) {
        let idx = n as usize;
        if idx >= self.affine.len() {
            self.affine.resize(idx + 1, None);
        }
        if let Some(v) = self.affine[idx] {
            return v;
        }
        let v = self.perf.decode_affine(n);
        self.affine[idx] = Some(v);
        v
    }

    /// Completes the iteration ending at `now`; finished requests are appended to `out`.
    pub fn finish_iteration(&mut self, now: Nanos, out: &mut Vec<Finished>) {
        debug_assert!(self.busy && now == self.iter_end);
        self.busy = false;
        let dur = now.since(self.iter_start);
        self.counters.busy_ns += dur.0;
        let jump = self.jump.take();
        // When the client sees this iteration's tokens (later than `now` behind a busy API server).
        let seen = self.delivered_at(self.iter_start, now, jump.map(|j| j.steps));
        let mut gen_tokens = 0u64;
        let mut decode_seqs = 0u64;
        let mut i = 0;
        while i < self.running.len() {
            let mut finished = false;
            {
                let s = &mut self.running[i];
                if s.chunk == 0 {
                    i += 1;
                    continue;
                }
                let steps = jump.map(|j| j.steps).unwrap_or(1);
                if jump.is_some() {
                    let adv = steps.min(s.output - s.generated);
                    s.computed += adv;
                    s.generated += adv;
                    gen_tokens += adv as u64;
                    decode_seqs += 1;
                } else {
                    let was_decode = s.generated > 0 && s.input + s.generated - s.computed == 1 && s.computed > 0;
                    s.computed += s.chunk;
                    if s.computed == s.input + s.generated {
                        s.generated += 1;
                        gen_tokens += 1;
                        if was_decode {
                            decode_seqs += 1;
                        }
                        if s.first_token.is_none() {
                            s.first_token = Some(seen);
                            self.counters.prompt_tokens += s.input as u64;
                            self.counters.ttft.observe_n(seen.since(s.arrival).as_secs_f64(), 1);
                        }
                    }
                }
                s.chunk = 0;
                if s.generated >= s.output {
                    finished = true;
                }
            }
            if finished {
                let mut s = self.running.remove(i);
                self.insert_prefix(&mut s);
                self.release(&mut s);
                let f = Finished {
                    id: s.id,
                    arrival: s.arrival,
                    first_sched: s.first_sched.unwrap_or(seen),
                    first_token: s.first_token.unwrap_or(seen),
                    finish: seen,
                    input: s.input,
                    output: s.output,
                    preemptions: s.preemptions,
                    cached_tokens: s.cached_tokens,
                };
                self.counters.request_success += 1;
                self.counters.e2e.observe_n(seen.since(s.arrival).as_secs_f64(), 1);
                self.counters.request_prompt_tokens.observe_n(f64::from(s.input), 1);
                self.counters.request_generation_tokens.observe_n(f64::from(s.output), 1);
                out.push(f);
            } else {
                let mut s = std::mem::replace(&mut self.running[i], Seq::new(0, Nanos::ZERO, 0, 1, Vec::new()));
                self.insert_prefix(&mut s);
                self.running[i] = s;
                i += 1;
            }
        }
        self.counters.generation_tokens += gen_tokens;
        if decode_seqs > 0 {
            let steps = jump.map(|j| j.steps).unwrap_or(1) as u64;
            self.counters.itl.observe_n(dur.as_secs_f64() / steps as f64, decode_seqs * steps);
        }
    }

    /// When the client sees the last tokens of the iteration (or decode jump of `k` steps)
    /// that ran from `start` to `end`: at once without a streaming limit, else when the API
    /// server has sent them. The server is a fluid queue, one service time per token: it
    /// ends either after the backlog and all these tokens (when it is the bottleneck), or
    /// one step's tokens after `end` (when it keeps up with the engine).
    fn delivered_at(&mut self, start: Nanos, end: Nanos, jump_steps: Option<u32>) -> Nanos {
        let per_token = self.cpu.stream_s_per_token;
        if per_token <= 0.0 {
            return end;
        }
        let emitted: u64 = self
            .running
            .iter()
            .filter(|s| s.chunk > 0)
            .map(|s| match jump_steps {
                Some(k) => k.min(s.output - s.generated) as u64,
                None => (s.computed + s.chunk == s.input + s.generated) as u64,
            })
            .sum();
        let k = jump_steps.unwrap_or(1).max(1) as u64;
        let first_ready = Nanos(start.0 + end.since(start).0 / k);
        let backlog_bound = self.stream_free.max(first_ready).plus(Nanos::from_secs_f64(emitted as f64 * per_token));
        let keep_up_bound = end.plus(Nanos::from_secs_f64(emitted as f64 / k as f64 * per_token));
        self.stream_free = backlog_bound.max(keep_up_bound);
        self.stream_free
    }

    /// Requests in this engine (running first, then waiting), for draining and reports.
    pub fn drain_all(&mut self) -> Vec<Seq> {
        let mut v: Vec<Seq> = self.running.drain(..).collect();
        v.extend(self.waiting.drain(..));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::catalog::Catalog;
    use crate::twin::perf::RooflinePerf;

    /// An engine whose tokens reach the client when computed (no streaming limit), so that
    /// the timing tests see the scheduling alone.
    fn engine(blocks: u32, cfg: EngineConfig) -> Engine {
        let cfg = EngineConfig { stream_tokens_per_s: Some(0.0), ..cfg };
        let c = Catalog::default();
        let p = RooflinePerf::new(c.model("Llama-3-8B", "").unwrap(), c.gpu("A100-80GB", "").unwrap(), 1);
        Engine::new(cfg, Arc::new(p), blocks)
    }

    fn run(e: &mut Engine, mut now: Nanos) -> (Nanos, Vec<Finished>) {
        let mut out = Vec::new();
        while let Some(end) = e.start_iteration(now) {
            assert!(end > now);
            now = end;
            e.finish_iteration(now, &mut out);
            e.check_invariants().unwrap();
        }
        (now, out)
    }

    #[test]
    fn single_request_matches_perf_model() {
        let mut e = engine(10_000, EngineConfig::default());
        e.enqueue(Seq::new(1, Nanos::ZERO, 1000, 50, vec![]));
        let (_, out) = run(&mut e, Nanos::ZERO);
        let f = out[0];
        let pre = e.perf.prefill_s(1000);
        assert!((f.first_token.as_secs_f64() - pre).abs() < 1e-6, "{:?} vs {pre}", f.first_token);
        let (a, b) = e.perf.decode_affine(1);
        let dec: f64 = (0..49).map(|i| a + b * (1000.0 + i as f64)).sum();
        assert!((f.finish.as_secs_f64() - pre - dec).abs() < 1e-5, "{} vs {}", f.finish.as_secs_f64(), pre + dec);
    }

    #[test]
    fn preemption_under_kv_pressure_still_completes() {
        // 40 blocks × 16 = 640 tokens for 4 requests of 100 + 200.
        let mut e = engine(40, EngineConfig::default());
        for i in 0..4 {
            e.enqueue(Seq::new(i, Nanos::ZERO, 100, 200, vec![]));
        }
        let (_, out) = run(&mut e, Nanos::ZERO);
        assert_eq!(out.len(), 4);
        assert!(e.counters.preemptions > 0);
        assert_eq!(e.used_blocks(), 0);
    }

    #[test]
    fn prefix_cache_hits() {
        let cfg = EngineConfig { enable_prefix_caching: true, ..Default::default() };
        let mut e = engine(10_000, cfg);
        e.enqueue(Seq::new(1, Nanos::ZERO, 1100, 5, vec![7, 8, 9]));
        let (now, _) = run(&mut e, Nanos::ZERO);
        e.enqueue(Seq::new(2, now, 1100, 5, vec![7, 8, 10]));
        let (_, out) = run(&mut e, now);
        assert_eq!(out[0].cached_tokens, 1024);
        e.check_invariants().unwrap();
    }

    #[test]
    fn interrupt_cuts_a_jump() {
        let mut e = engine(10_000, EngineConfig::default());
        e.enqueue(Seq::new(1, Nanos::ZERO, 10, 500, vec![]));
        let mut out = Vec::new();
        let t1 = e.start_iteration(Nanos::ZERO).unwrap();
        e.finish_iteration(t1, &mut out);
        let t2 = e.start_iteration(t1).unwrap(); // a jump of 498 steps
        let mid = Nanos(t1.0 + (t2.0 - t1.0) / 3);
        let t3 = e.interrupt(mid).unwrap();
        assert!(t3 > mid && t3 < t2);
        e.finish_iteration(t3, &mut out);
        e.check_invariants().unwrap();
        let (_, out) = run(&mut e, t3);
        assert_eq!(out.len(), 1);
        // Same finish time as an uninterrupted run (the batch is unchanged).
        assert!((out[0].finish.0 as i64 - t2.0 as i64).abs() < 1000, "{:?} {:?}", out[0].finish, t2);
    }
}
