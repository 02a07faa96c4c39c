//! A deliberately misbehaving policy, for tests of the sandbox. The binding config chooses
//! the misbehaviour: `{"mode": "loop" | "memory" | "recursion" | "trap" | "file" | "socket" |
//! "environment" | "huge-output" | "wrong-count" | "sleep" | "clock" | "slow" | "counter" |
//! "none"}` (`slow` takes `"spin": N` iterations).
//!
//! `counter` denies with the number of calls this instance has served, which shows whether
//! instances are reused between calls.
//!
//! For `file`, `socket` and `environment` the plugin tries to escape and reports the outcome:
//! a `deny` whose reason starts with `sandbox held` when the host refused, an `allow` when the
//! escape worked (which the tests treat as a failure).

use serde_json::Value;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use hearth::plugin::types::Obligations;

struct Hostile;

#[inline(never)]
fn recurse(depth: u64, trail: &mut [u8; 256]) -> u64 {
    trail[(depth % 256) as usize] = depth as u8;
    if depth == u64::MAX { 0 } else { recurse(depth + 1, trail) + u64::from(trail[0]) }
}

fn held(outcome: Result<String, String>) -> Decision {
    match outcome {
        Ok(found) => {
            let message = format!("escaped the sandbox: {} bytes", found.len());
            hearth::plugin::log::write(hearth::plugin::log::Level::Error, &message);
            Decision::Allow
        }
        Err(why) => Decision::Deny(format!("sandbox held: {why}")),
    }
}

impl Guest for Hostile {
    fn authorize(request: Request, resources: Vec<SubjectResource>) -> Vec<Decision> {
        let config: Value = serde_json::from_str(&request.config).unwrap_or(Value::Null);
        let mode = config.get("mode").and_then(Value::as_str).unwrap_or("none");
        let decision = match mode {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xA5; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recursion" => {
                let mut trail = [0u8; 256];
                let n = recurse(0, &mut trail);
                Decision::Deny(format!("recursion returned {n}"))
            }
            "trap" => panic!("a plugin bug"),
            "file" => held(std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())),
            "socket" => held(
                std::net::TcpStream::connect("127.0.0.1:5432")
                    .map(|_| "connected".to_owned())
                    .map_err(|e| e.to_string()),
            ),
            "environment" => {
                let vars: Vec<(String, String)> = std::env::vars().collect();
                if vars.is_empty() { held(Err("no environment".into())) } else { held(Ok(format!("{vars:?}"))) }
            }
            "huge-output" => {
                let redact = (0..2_000_000).map(|i| format!("element{i}.with.a.long.path")).collect();
                Decision::AllowWith(Obligations { redact, labels: Vec::new() })
            }
            "wrong-count" => return Vec::new(),
            // Blocks in a host call (WASI's monotonic-clock timer), where no epoch deadline
            // can interrupt the guest: the host must not let the sleep happen.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(600));
                Decision::Allow
            }
            // Reads the WASI clocks, which are outside the contract (the `clock` interface is
            // the plugin's clock): they must be stopped.
            "clock" => {
                let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let start = std::time::Instant::now();
                std::hint::black_box((0..100_000u64).sum::<u64>());
                let elapsed = start.elapsed();
                if wall.is_zero() && elapsed.is_zero() {
                    held(Err("the clocks are stopped".into()))
                } else {
                    held(Ok(format!("{wall:?} {elapsed:?}")))
                }
            }
            // Busy for `spin` iterations, then allows: a slow but well-behaved plugin.
            "slow" => {
                let spin = config.get("spin").and_then(Value::as_u64).unwrap_or(10_000_000);
                let mut n: u64 = 0;
                for i in 0..spin {
                    n = std::hint::black_box(n.wrapping_add(i));
                }
                std::hint::black_box(n);
                Decision::Allow
            }
            "counter" => {
                static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                Decision::Deny(format!("instance call {n}"))
            }
            _ => Decision::Allow,
        };
        resources.iter().map(|_| decision.clone()).collect()
    }

    fn validate(_request: Request, _resource: SubjectResource) -> Vec<Issue> {
        Vec::new()
    }
}

export!(Hostile);
