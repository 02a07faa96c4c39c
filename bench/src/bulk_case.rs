//! Case 6: bulk data in and out. `hearth import` (the real CLI, over TLS, `batch` Bundles of
//! 500) loads an NDJSON data set of patients and their observations into a fresh server; then
//! a Bulk Data export of the same types is kicked off, polled and downloaded whole. Both are
//! timed end to end and reported as resources per second.

use std::path::Path;
use std::time::{Duration, Instant};

use hearth_bench::data::{self, Rng};
use hearth_bench::load::Measurement;
use hearth_bench::servers::ServerProcess;
use serde_json::{Value, json};

/// What one database did.
pub struct BulkRun {
    pub resources: u64,
    pub import: Measurement,
    pub export: Measurement,
}

/// A throughput-only measurement: `count` resources in `elapsed`.
fn measured(count: u64, elapsed: Duration) -> Measurement {
    Measurement { requests: count, errors: 0, elapsed, latencies_us: Vec::new() }
}

/// Writes `patients` patients and `per_patient` observations each as two NDJSON files.
fn write_data_set(dir: &Path, patients: usize, per_patient: usize) -> std::io::Result<u64> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut patient_file = std::io::BufWriter::new(std::fs::File::create(dir.join("1-Patient.ndjson"))?);
    let mut observation_file = std::io::BufWriter::new(std::fs::File::create(dir.join("2-Observation.ndjson"))?);
    for n in 0..patients as u64 {
        let mut rng = Rng::new(n);
        let mut patient = data::patient(&mut rng, n);
        let id = format!("bulk-{n}");
        patient["id"] = json!(id);
        writeln!(patient_file, "{patient}")?;
        for k in 0..per_patient {
            let mut observation = data::observation(&mut rng, &id);
            observation["id"] = json!(format!("bulk-{n}-{k}"));
            writeln!(observation_file, "{observation}")?;
        }
    }
    patient_file.flush()?;
    observation_file.flush()?;
    Ok((patients * (1 + per_patient)) as u64)
}

/// Imports the data set with the `hearth` CLI, then exports it; `token` may write and export.
pub async fn run(
    hearth_bin: &Path,
    work: &Path,
    server: &ServerProcess,
    client: &reqwest::Client,
    token: &str,
    ca: &Path,
    patients: usize,
    per_patient: usize,
) -> Result<BulkRun, String> {
    let input = work.join("bulk-input");
    let resources = write_data_set(&input, patients, per_patient).map_err(|e| e.to_string())?;

    let started = Instant::now();
    let output = tokio::process::Command::new(hearth_bin)
        .arg("import")
        .arg(&input)
        .args(["--server", &server.base, "--token", token, "--batch", "500"])
        .arg("--cacert")
        .arg(ca)
        .output()
        .await
        .map_err(|e| format!("cannot run hearth import: {e}"))?;
    let import_elapsed = started.elapsed();
    if !output.status.success() {
        return Err(format!("hearth import failed: {}", String::from_utf8_lossy(&output.stderr)));
    }

    let started = Instant::now();
    let kicked = client
        .get(server.url("$export?_type=Patient,Observation"))
        .header("prefer", "respond-async")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status_url = kicked
        .headers()
        .get("content-location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("the export was not started ({})", kicked.status()))?
        .to_owned();
    let manifest: Value = loop {
        let reply = client.get(&status_url).send().await.map_err(|e| e.to_string())?;
        match reply.status().as_u16() {
            200 => {
                let bytes = reply.bytes().await.map_err(|e| e.to_string())?;
                break serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            }
            202 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => return Err(format!("export status {other}")),
        }
    };
    let mut exported = 0u64;
    for file in manifest["output"].as_array().into_iter().flatten() {
        let url = file["url"].as_str().unwrap_or_default();
        // One file holds every resource of its type (a million Observations take minutes), far
        // beyond the client's 30 s limit for a request.
        let mut reply = client.get(url).timeout(Duration::from_secs(3600)).send().await.map_err(|e| e.to_string())?;
        while let Some(chunk) = reply.chunk().await.map_err(|e| e.to_string())? {
            exported += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    let export_elapsed = started.elapsed();
    if exported != resources {
        return Err(format!("exported {exported} resources, imported {resources}"));
    }
    Ok(BulkRun { resources, import: measured(resources, import_elapsed), export: measured(exported, export_elapsed) })
}
