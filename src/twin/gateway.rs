//! The twin's gateway: the arrival stream, the load balancer, and the queue of requests
//! held while no replica serves.
//!
//! Requests come from the [`ArrivalStream`] in time order and get ids in arrival order.
//! The load balancer picks a serving replica (round robin, or the least outstanding
//! requests starting from the round-robin position); with none serving, a request waits
//! at the gateway up to `cluster.gatewayQueueLimit` and is rejected beyond it. Held
//! requests are invisible to the pods' metrics, as they are in a cluster.

use std::collections::VecDeque;

use super::engine::Seq;
use super::scenario::LoadBalancer;
use super::time::Nanos;
use super::traces::{Arrival, ArrivalStream};

/// Arrivals, load balancing and the held-request queue.
pub struct Gateway {
    lb: LoadBalancer,
    limit: u64,
    held: VecDeque<Seq>,
    rr: usize,
    arrivals: ArrivalStream,
    next: Option<Arrival>,
    next_id: u64,
}

impl Gateway {
    /// A gateway over `arrivals` with this balancer and held-queue limit.
    pub fn new(mut arrivals: ArrivalStream, lb: LoadBalancer, limit: u64) -> Gateway {
        let next = arrivals.next_arrival();
        Gateway { lb, limit, held: VecDeque::new(), rr: 0, arrivals, next, next_id: 0 }
    }

    /// When the next request arrives, if any is left.
    pub fn next_arrival_time(&self) -> Option<Nanos> {
        self.next.as_ref().map(|a| a.at)
    }

    /// Takes the next request (with its id) and advances the stream.
    pub fn take_arrival(&mut self) -> Option<Seq> {
        let a = self.next.take()?;
        self.next_id += 1;
        self.next = self.arrivals.next_arrival();
        Some(Seq::new(self.next_id, a.at, a.input_tokens, a.output_tokens, a.hash_ids))
    }

    /// True when the stream is exhausted.
    pub fn exhausted(&self) -> bool {
        self.next.is_none()
    }

    /// Requests the stream still holds, if known.
    pub fn remaining_hint(&self) -> Option<u64> {
        self.arrivals.len_hint().map(|n| n + self.next.is_some() as u64)
    }

    /// Requests held at the gateway.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Holds a request while no replica serves; false (rejected) when the queue is full.
    pub fn hold(&mut self, s: Seq) -> bool {
        if (self.held.len() as u64) < self.limit {
            self.held.push_back(s);
            true
        } else {
            false
        }
    }

    /// The held requests, oldest first, leaving the queue empty.
    pub fn release_held(&mut self) -> VecDeque<Seq> {
        std::mem::take(&mut self.held)
    }

    /// Picks one of the `serving` replicas, or `None` if there are none;
    /// `outstanding(id)` is a replica's requests in its engine.
    pub fn pick(&mut self, serving: &[usize], outstanding: impl Fn(usize) -> usize) -> Option<usize> {
        let n = serving.len();
        if n == 0 {
            return None;
        }
        self.rr = (self.rr + 1) % n;
        match self.lb {
            LoadBalancer::RoundRobin => Some(serving[self.rr]),
            LoadBalancer::LeastOutstanding => {
                let mut best = None;
                let mut best_load = usize::MAX;
                for k in 0..n {
                    let id = serving[(self.rr + k) % n];
                    let l = outstanding(id);
                    if l < best_load {
                        best_load = l;
                        best = Some(id);
                        if l == 0 {
                            break;
                        }
                    }
                }
                best
            }
        }
    }
}
