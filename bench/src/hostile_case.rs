//! Case 8 (reliability issue): hostile plugins next to normal traffic. The same normal
//! workload (ungated Patient reads) is measured alone and while 100 concurrent requests drive a
//! policy plugin that spins until its deadline (the attack: every call burns its whole
//! 100 ms budget, then is denied); then the server's resident memory is read before and after
//! `calls` calls into a well-behaved plugin, to show that instances are not leaked.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use hearth_bench::load::{self, LoadSpec, Measurement};
use hearth_bench::report::Comparison;

use crate::{ROUNDS, Scratch, client_for, get_loop, seed, start_hearth};

/// Concurrent requests into the spinning plugin during the attack rounds.
const ATTACKERS: usize = 100;

pub struct HostileRun {
    pub comparisons: Vec<Comparison>,
    pub notes: Vec<String>,
    pub memory: Vec<(String, f64)>,
}

pub async fn run(
    spec: LoadSpec,
    hearth_bin: &Path,
    scratch: &Scratch,
    seed_patients: usize,
    calls: u64,
) -> Result<HostileRun, String> {
    let dir = scratch.path("policies-hostile");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("b.toml"),
        "[[binding]]\nplugin = \"spinner\"\nresource_types = [\"Observation\"]\ninteractions = [\"read\"]\n\
         config = { mode = \"loop\" }\n\n\
         [[binding]]\nplugin = \"allower\"\nresource_types = [\"Practitioner\"]\ninteractions = [\"read\"]\n\
         config = { mode = \"none\" }\n",
    )
    .map_err(|e| e.to_string())?;
    let policies = dir.display().to_string();
    let server = start_hearth("hostile", hearth_bin, scratch, None, &[("HEARTH_POLICIES", policies.as_str())]);
    let data = scratch.path("hostile");
    let limits = json!({"limits": {"timeout_ms": 100, "memory_mib": 16}});
    hearth_bench::plugins::load_as(&data, &server.base, "spinner", "hostile", limits.clone()).await?;
    hearth_bench::plugins::load_as(&data, &server.base, "allower", "hostile", limits).await?;

    let client = client_for(scratch, "hostile", spec.concurrency);
    let ids = seed(&client, &server, seed_patients).await;
    let reads: Arc<Vec<String>> = Arc::new(ids.iter().map(|id| format!("Patient/{id}")).collect());
    let attack_client = client_for(scratch, "hostile", ATTACKERS);
    let observation = create(&attack_client, &server.url("Observation"), "Observation").await?;
    let practitioner = create(&attack_client, &server.url("Practitioner"), "Practitioner").await?;

    let denied = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let (under_attack, alone) = load::alternating(
        spec,
        ROUNDS,
        |s| {
            let (denied, other) = (denied.clone(), other.clone());
            let (attack_client, url) = (attack_client.clone(), server.url(&observation));
            let (client, server, reads) = (&client, &server, reads.clone());
            async move {
                let stop = Arc::new(AtomicBool::new(false));
                let attackers: Vec<_> = (0..ATTACKERS)
                    .map(|_| {
                        let (client, url, stop) = (attack_client.clone(), url.clone(), stop.clone());
                        let (denied, other) = (denied.clone(), other.clone());
                        tokio::spawn(async move {
                            while !stop.load(Ordering::Relaxed) {
                                match client.get(&url).send().await.map(|r| r.status().as_u16()) {
                                    Ok(403) => denied.fetch_add(1, Ordering::Relaxed),
                                    _ => other.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                        })
                    })
                    .collect();
                let measured = get_loop(s, client, server, reads).await;
                stop.store(true, Ordering::Relaxed);
                futures::future::join_all(attackers).await;
                measured
            }
        },
        |s| get_loop(s, &client, &server, reads.clone()),
    )
    .await;
    let (denied, other) = (denied.load(Ordering::Relaxed), other.load(Ordering::Relaxed));

    // Memory: warm the allowing plugin, read RSS, make `calls` gated reads, read RSS again.
    let gated = Arc::new(vec![practitioner]);
    let warm = LoadSpec {
        concurrency: spec.concurrency,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(600),
        max_requests: 2_000,
    };
    let _ = get_loop(warm, &client, &server, gated.clone()).await;
    let before = server.rss_mib();
    let started = Instant::now();
    let many = LoadSpec { max_requests: calls, ..warm };
    let made: Measurement = get_loop(many, &client, &server, gated).await;
    let after = server.rss_mib();
    let elapsed = started.elapsed();

    let mut notes = vec![format!(
        "case 8: during the attack rounds {ATTACKERS} connections made {denied} requests into a policy plugin that \
         spins until its 100 ms deadline, every one denied (403) ({other} other answers); the normal workload kept \
         {:.0}% of its throughput, p99 {:.1} ms vs {:.1} ms alone",
        100.0 * under_attack.throughput() / alone.throughput().max(1e-9),
        under_attack.percentile_ms(0.99),
        alone.percentile_ms(0.99),
    )];
    let mut memory = Vec::new();
    if let (Some(before), Some(after)) = (before, after) {
        notes.push(format!(
            "case 8: {} plugin-gated reads ({} failed) in {:.1} s; server RSS {before:.1} MiB before, {after:.1} MiB \
             after ({:+.1} MiB)",
            made.requests,
            made.errors,
            elapsed.as_secs_f64(),
            after - before
        ));
        memory.push((format!("hearth before {calls} plugin-gated reads"), before));
        memory.push((format!("hearth after {calls} plugin-gated reads"), after));
    }
    let comparisons = vec![Comparison::new(
        "8 hostile plugin",
        (&format!("read, while {ATTACKERS} requests spin a plugin to its deadline"), &under_attack),
        ("read, no attack", &alone),
        "report",
        None,
    )];
    Ok(HostileRun { comparisons, notes, memory })
}

/// Creates a minimal resource of `res_type`; its `Type/id`.
async fn create(client: &reqwest::Client, url: &str, res_type: &str) -> Result<String, String> {
    let body = match res_type {
        "Observation" => json!({"resourceType": "Observation", "status": "final", "code": {"text": "bench"}}),
        _ => json!({"resourceType": res_type}),
    };
    let response = client
        .post(url)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).ok_or("no Location")?;
    let path = location.split("/_history").next().unwrap_or(location);
    let at = path.rfind(&format!("{res_type}/")).ok_or("Location without the type")?;
    Ok(path[at..].to_owned())
}
