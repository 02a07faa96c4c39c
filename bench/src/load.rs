//! A closed-loop HTTP/TLS load generator: a fixed number of workers, each on its own
//! keep-alive HTTP/1.1 connection, sending the next request when the last one answered;
//! bounded by time and by request count.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How hard and how long to drive a server.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub max_requests: u64,
}

/// What one measured run saw.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies of successful requests, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Measurement {
    /// One measurement from several rounds of the same workload.
    pub fn merge(rounds: Vec<Measurement>) -> Measurement {
        let mut merged = Measurement { requests: 0, errors: 0, elapsed: Duration::ZERO, latencies_us: Vec::new() };
        for round in rounds {
            merged.requests += round.requests;
            merged.errors += round.errors;
            merged.elapsed += round.elapsed;
            merged.latencies_us.extend(round.latencies_us);
        }
        merged.latencies_us.sort_unstable();
        merged
    }

    pub fn throughput(&self) -> f64 {
        (self.requests - self.errors) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }
}

/// An HTTPS client trusting only `ca_pem`, with one keep-alive connection per worker, sending
/// `token` as its bearer token when given.
pub fn client(ca_pem: &Path, concurrency: usize, token: Option<&str>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_pem).expect("CA file")).expect("CA parses");
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("token header"));
    }
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .default_headers(headers)
        .http1_only()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Runs `request(worker, n)` in a closed loop: first for the warm-up (not recorded), then for
/// the measured period. `request` returns whether the answer was a success.
pub async fn run<F, Fut>(spec: LoadSpec, request: F) -> Measurement
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let counter = Arc::new(AtomicU64::new(0));
    phase(spec, spec.warmup, u64::MAX, request.clone(), counter.clone()).await;
    let started = Instant::now();
    let results = phase(spec, spec.duration, spec.max_requests, request, counter).await;
    let elapsed = started.elapsed();
    let mut latencies_us = Vec::new();
    let mut requests = 0;
    let mut errors = 0;
    for (worker_latencies, worker_errors) in results {
        requests += worker_latencies.len() as u64 + worker_errors;
        errors += worker_errors;
        latencies_us.extend(worker_latencies);
    }
    latencies_us.sort_unstable();
    Measurement { requests, errors, elapsed, latencies_us }
}

async fn phase<F, Fut>(
    spec: LoadSpec,
    length: Duration,
    max_requests: u64,
    request: Arc<F>,
    counter: Arc<AtomicU64>,
) -> Vec<(Vec<u32>, u64)>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let deadline = Instant::now() + length;
    let issued = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..spec.concurrency)
        .map(|worker| {
            let (request, counter, issued) = (request.clone(), counter.clone(), issued.clone());
            async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_requests {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    if request(worker, n).await {
                        latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            }
        })
        .collect();
    futures::future::join_all(workers).await
}

/// Measures two workloads in alternating rounds (A B A B ...), so drift in a shared, noisy
/// machine (other tenants, disk flush latency) falls on both alike. The warm-up runs before
/// the first round of each.
pub async fn alternating<FA, FB, A, B>(spec: LoadSpec, rounds: u32, mut a: A, mut b: B) -> (Measurement, Measurement)
where
    A: FnMut(LoadSpec) -> FA,
    B: FnMut(LoadSpec) -> FB,
    FA: Future<Output = Measurement>,
    FB: Future<Output = Measurement>,
{
    let rounds = rounds.max(1);
    let round =
        LoadSpec { duration: spec.duration / rounds, max_requests: spec.max_requests / u64::from(rounds), ..spec };
    let (mut a_rounds, mut b_rounds) = (Vec::new(), Vec::new());
    for index in 0..rounds {
        let this = if index == 0 { round } else { LoadSpec { warmup: Duration::ZERO, ..round } };
        a_rounds.push(a(this).await);
        b_rounds.push(b(this).await);
    }
    (Measurement::merge(a_rounds), Measurement::merge(b_rounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn alternating_rounds_merge() {
        let spec =
            LoadSpec { concurrency: 2, warmup: Duration::ZERO, duration: Duration::from_secs(30), max_requests: 40 };
        let (a, b) =
            alternating(spec, 4, |s| run(s, |_, _| async { true }), |s| run(s, |_, n| async move { n % 2 == 0 })).await;
        assert_eq!(a.requests, 40);
        assert_eq!(a.errors, 0);
        assert_eq!(b.requests, 40);
        assert!(b.errors > 0);
    }

    #[test]
    fn percentiles_and_throughput() {
        let m = Measurement {
            requests: 101,
            errors: 1,
            elapsed: Duration::from_secs(2),
            latencies_us: (1..=100).map(|ms| ms * 1000).collect(),
        };
        assert_eq!(m.throughput(), 50.0);
        assert_eq!(m.percentile_ms(0.0), 1.0);
        assert_eq!(m.percentile_ms(0.5), 51.0);
        assert_eq!(m.percentile_ms(0.99), 99.0);
        assert_eq!(m.percentile_ms(1.0), 100.0);
    }

    #[tokio::test]
    async fn run_is_bounded_by_request_count_and_counts_errors() {
        let spec =
            LoadSpec { concurrency: 4, warmup: Duration::ZERO, duration: Duration::from_secs(30), max_requests: 100 };
        let m = run(spec, |_, n| async move { n % 10 != 0 }).await;
        assert_eq!(m.requests, 100);
        assert_eq!(m.errors, 10);
        assert_eq!(m.latencies_us.len(), 90);
        assert!(m.elapsed < Duration::from_secs(5), "stops at the request bound, not the deadline");
    }
}
