//! `GET /metrics` in the Prometheus text format: requests, latency, tokens per second, hidden
//! tokens per answer, search cost — the efficiency monitoring of o1's inference phase.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use super::batching::BatchCounters;

const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const TOKEN_BUCKETS: [f64; 10] = [16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64, buckets: &[f64]) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (c, &b) in self.counts.iter_mut().zip(buckets) {
            if value <= b {
                *c += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in buckets.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    hidden_per_answer: Mutex<Histogram>,
    pub hidden_tokens: AtomicU64,
    pub visible_tokens: AtomicU64,
    pub answers: AtomicU64,
    pub policy_calls: AtomicU64,
    pub reward_traces: AtomicU64,
    pub in_flight: AtomicI64,
    pub queued: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: Mutex::default(),
            latency: Mutex::default(),
            hidden_per_answer: Mutex::default(),
            hidden_tokens: AtomicU64::new(0),
            visible_tokens: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            policy_calls: AtomicU64::new(0),
            reward_traces: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            queued: AtomicI64::new(0),
        }
    }
}

impl Metrics {
    pub fn request(&self, endpoint: &str, status: u16, seconds: f64) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((endpoint.to_string(), status)).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            l.entry(endpoint.to_string()).or_default().observe(seconds, &BUCKETS);
        }
    }

    pub fn answer(&self, hidden: u64, visible: u64, policy_calls: u64, reward_traces: u64) {
        self.hidden_tokens.fetch_add(hidden, Ordering::Relaxed);
        self.visible_tokens.fetch_add(visible, Ordering::Relaxed);
        self.answers.fetch_add(1, Ordering::Relaxed);
        self.policy_calls.fetch_add(policy_calls, Ordering::Relaxed);
        self.reward_traces.fetch_add(reward_traces, Ordering::Relaxed);
        if let Ok(mut h) = self.hidden_per_answer.lock() {
            h.observe(hidden as f64, &TOKEN_BUCKETS);
        }
    }

    pub fn render(&self, batch: &BatchCounters) -> String {
        let mut out = String::new();
        let uptime = self.started.elapsed().as_secs_f64().max(1e-9);
        out.push_str("# HELP ponder_requests_total HTTP requests by endpoint and status.\n# TYPE ponder_requests_total counter\n");
        if let Ok(r) = self.requests.lock() {
            for ((endpoint, status), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "ponder_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP ponder_request_seconds Request latency.\n# TYPE ponder_request_seconds histogram\n");
        if let Ok(l) = self.latency.lock() {
            for (endpoint, h) in l.iter() {
                h.render(
                    &mut out,
                    "ponder_request_seconds",
                    &format!("endpoint=\"{endpoint}\""),
                    &BUCKETS,
                );
            }
        }
        out.push_str("# HELP ponder_hidden_tokens_per_answer Hidden (chain-of-thought and search) tokens behind each answer.\n# TYPE ponder_hidden_tokens_per_answer histogram\n");
        if let Ok(h) = self.hidden_per_answer.lock() {
            h.render(&mut out, "ponder_hidden_tokens_per_answer", "", &TOKEN_BUCKETS);
        }
        let generated = batch.generated_tokens.load(Ordering::Relaxed);
        let counters = [
            (
                "ponder_hidden_tokens_total",
                "Hidden tokens spent on answers.",
                self.hidden_tokens.load(Ordering::Relaxed) as f64,
            ),
            (
                "ponder_visible_tokens_total",
                "Tokens of returned answers.",
                self.visible_tokens.load(Ordering::Relaxed) as f64,
            ),
            (
                "ponder_answers_total",
                "Answers returned.",
                self.answers.load(Ordering::Relaxed) as f64,
            ),
            (
                "ponder_generated_tokens_total",
                "Tokens the policy generated.",
                generated as f64,
            ),
            (
                "ponder_search_policy_calls_total",
                "Policy calls made by searches.",
                self.policy_calls.load(Ordering::Relaxed) as f64,
            ),
            (
                "ponder_search_reward_traces_total",
                "Traces scored by the reward model.",
                self.reward_traces.load(Ordering::Relaxed) as f64,
            ),
            (
                "ponder_batches_total",
                "Batches the model worker ran.",
                batch.batches.load(Ordering::Relaxed) as f64,
            ),
            (
                "ponder_weight_updates_total",
                "New weights loaded by POST /update_weights_from_disk.",
                batch.weight_updates.load(Ordering::Relaxed) as f64,
            ),
            (
                "ponder_batched_requests_total",
                "Generation requests in those batches.",
                batch.batched_requests.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let gauges = [
            (
                "ponder_tokens_per_second",
                "Generated tokens per second since start.",
                generated as f64 / uptime,
            ),
            (
                "ponder_in_flight_requests",
                "Requests being worked on.",
                self.in_flight.load(Ordering::Relaxed) as f64,
            ),
            (
                "ponder_queued_requests",
                "Requests waiting for a slot.",
                self.queued.load(Ordering::Relaxed) as f64,
            ),
            ("ponder_uptime_seconds", "Seconds since start.", uptime),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}
