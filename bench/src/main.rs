//! `hearth-bench`: the benchmark command (run it through `bench/run`).
//!
//! `all` starts every server as a child process, drives each from this process over TLS and
//! prints each subject next to its baseline measured in the same run; `floor` and `serve` are
//! the server modes it starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hearth_bench::data::{self, Rng};
use hearth_bench::load::{self, LoadSpec, Measurement};
use hearth_bench::report::{Comparison, Report};
use hearth_bench::servers::{ServerProcess, sibling_binary};

/// As in the `hearth` binary (the floor, `serve` and the load generator all run from here).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bulk_case;
mod hostile_case;
mod scale_case;
mod search_case;

#[derive(Parser)]
#[command(name = "hearth-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every case and write bench/results/latest.json.
    All {
        /// Short measurements (a smoke run in under 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Connections driving each server.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// PostgreSQL server to create a scratch database on.
        #[arg(long, env = "HEARTH_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_url: String,
        /// Run only these cases (e.g. `--cases 3` or `--cases 1,3`); default: all.
        #[arg(long, value_delimiter = ',')]
        cases: Vec<u32>,
        /// Where to write the JSON report.
        #[arg(long, default_value = "bench/results/latest.json")]
        output: PathBuf,
        /// Patients (each with 10 observations) loaded for cases 4 and 5; default 1,000 in
        /// quick mode and 100,000 in full mode.
        #[arg(long)]
        search_patients: Option<usize>,
    },
    /// The TLS floor: axum on Hearth's own TLS listener, returning a fixed small JSON.
    Floor {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Hearth's server, built with the benchmark-only plaintext switch
    /// (HEARTH_BENCH_PLAINTEXT=1 stores bodies unsealed).
    Serve(Box<hearth_server::config::ServeArgs>),
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match cli.command {
        Command::Floor { cert, key } => runtime.block_on(floor(&cert, &key)),
        Command::Serve(args) => {
            let settings = (*args).resolve().unwrap_or_else(|e| panic!("{e}"));
            runtime.block_on(hearth_server::serve::run(settings)).unwrap_or_else(|e| panic!("{e}"));
        }
        Command::All { quick, concurrency, postgres_url, cases, output, search_patients } => {
            runtime.block_on(all(quick, concurrency, &postgres_url, &cases, &output, search_patients));
        }
    }
}

/// Alternating rounds per comparison (see `load::alternating`).
const ROUNDS: u32 = 4;

const FLOOR_BODY: &str = r#"{"resourceType":"Patient","id":"floor","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00.000000Z"},"active":true,"gender":"female","birthDate":"1970-01-01","name":[{"family":"Floor","given":["Baseline"]}]}"#;

async fn floor(cert: &Path, key: &Path) {
    let tls = hearth_server::tls::server_config(cert, key, None).expect("TLS files");
    let app = axum::Router::new().route(
        "/fixed",
        axum::routing::get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/fhir+json")], FLOOR_BODY) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("floor listening on https://{}", listener.local_addr().expect("addr"));
    hearth_server::server::serve(listener, tls, app, hearth_server::server::shutdown_signal()).await;
}

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Starts a Hearth server (dev mode, its own data directory) from `binary`.
fn start_hearth(
    name: &str,
    binary: &Path,
    scratch: &Scratch,
    database_url: Option<&str>,
    env: &[(&str, &str)],
) -> ServerProcess {
    let data = scratch.path(name);
    let mut args = vec![
        "serve".to_owned(),
        "--dev".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    if let Some(url) = database_url {
        args.push("--database-url".into());
        args.push(url.to_owned());
    }
    ServerProcess::start(name, binary, &args, env, &scratch.path(&format!("{name}.log")))
}

/// A client for the dev-mode server `name`: trusting its CA, with a `user/*.cruds` token from
/// its development issuer.
fn client_for(scratch: &Scratch, name: &str, concurrency: usize) -> reqwest::Client {
    let data = scratch.path(name);
    load::client(&data.join("tls/ca.pem"), concurrency, Some(&token_for(scratch, name)))
}

/// A `user/*.cruds` token from the dev-mode server `name`'s development issuer.
fn token_for(scratch: &Scratch, name: &str) -> String {
    scoped_token(scratch, name, "user/*.cruds", None)
}

/// A token with `scope` (and `patient` in context) from server `name`'s development issuer.
fn scoped_token(scratch: &Scratch, name: &str, scope: &str, patient: Option<&str>) -> String {
    let data = scratch.path(name);
    let key =
        hearth_server::auth::token::DevSigningKey::load_or_create(&hearth_server::serve::dev_token_key_path(&data))
            .expect("dev signing key");
    key.issue("hearth-bench", scope, Duration::from_secs(3600), patient, &[])
}

/// The confined clients of case 5 for server `name`, once its data is loaded.
fn confined_clients(
    scratch: &Scratch,
    name: &str,
    concurrency: usize,
    loaded: &search_case::Loaded,
) -> Option<search_case::Confined> {
    let patient = search_case::confined_patient(loaded)?.to_owned();
    let ca = scratch.path(name).join("tls/ca.pem");
    let patient_token = scoped_token(scratch, name, "patient/*.rs", Some(&patient));
    let constrained_token = scoped_token(scratch, name, "user/Observation.rs?category=vital-signs", None);
    Some(search_case::Confined {
        patient_client: load::client(&ca, concurrency, Some(&patient_token)),
        constrained_client: load::client(&ca, concurrency, Some(&constrained_token)),
        patient,
    })
}

/// Case 6 on one database: a fresh server, `hearth import`, then a Bulk Data export.
async fn bulk_on(
    name: &str,
    hearth_bin: &Path,
    scratch: &Scratch,
    database_url: Option<&str>,
    patients: usize,
) -> Result<bulk_case::BulkRun, String> {
    let server = start_hearth(name, hearth_bin, scratch, database_url, &[]);
    let client = client_for(scratch, name, 4);
    let token = token_for(scratch, name);
    let ca = scratch.path(name).join("tls/ca.pem");
    bulk_case::run(hearth_bin, &scratch.path(&format!("{name}-work")), &server, &client, &token, &ca, patients, 10)
        .await
}

async fn all(
    quick: bool,
    concurrency: usize,
    postgres_url: &str,
    cases: &[u32],
    output: &Path,
    search_patients: Option<usize>,
) {
    let wanted = |case: u32| cases.is_empty() || cases.contains(&case);
    let spec = if quick {
        LoadSpec {
            concurrency,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(4),
            max_requests: 400_000,
        }
    } else {
        LoadSpec {
            concurrency,
            warmup: Duration::from_secs(3),
            duration: Duration::from_secs(20),
            max_requests: 5_000_000,
        }
    };
    let seed_patients = if quick { 300 } else { 3000 };
    let scratch = Scratch { dir: tempfile::tempdir().expect("scratch dir") };
    let hearth_bin = sibling_binary("hearth");
    let bench_bin = std::env::current_exe().expect("current exe");
    assert!(hearth_bin.exists(), "{} is missing: run bench/run, which builds it", hearth_bin.display());
    let mut comparisons = Vec::new();
    let mut memory = Vec::new();
    let mut notes = vec![
        "every Hearth request carries a bearer JWT (verified once, then cached), passes scope checks, is decrypted \
         or sealed, and appends a hash-chained audit entry (group commit); case 3 adds policy plugins"
            .to_owned(),
        "SQLite runs with synchronous=FULL (every commit fsynced); PostgreSQL with its defaults".to_owned(),
    ];

    // Case 1: the TLS floor vs a Hearth read, same TLS configuration and listener code.
    // Refusals are itemised without a per-address limit here: the case 1 refusal rows measure
    // what an itemised refusal costs (over the limit, a 429 costs less).
    let hearth = start_hearth("hearth-sqlite", &hearth_bin, &scratch, None, &[("HEARTH_REFUSALS_PER_ADDRESS", "0")]);
    let client = client_for(&scratch, "hearth-sqlite", concurrency);
    let patient_ids = seed(&client, &hearth, seed_patients).await;
    let reads: Arc<Vec<String>> = Arc::new(patient_ids.iter().map(|id| format!("Patient/{id}")).collect());
    if wanted(1) {
        eprintln!("case 1: TLS floor vs Hearth GET /Patient/{{id}} (SQLite)");
        let tls = scratch.path("hearth-sqlite").join("tls");
        let floor_args = vec![
            "floor".to_owned(),
            "--cert".into(),
            tls.join("server.pem").display().to_string(),
            "--key".into(),
            tls.join("server-key.pem").display().to_string(),
        ];
        let floor = ServerProcess::start("floor", &bench_bin, &floor_args, &[], &scratch.path("floor.log"));
        let fixed = Arc::new(vec!["fixed".to_owned()]);
        let (hearth_read, floor_read) = load::alternating(
            spec,
            ROUNDS,
            |s| get_loop(s, &client, &hearth, reads.clone()),
            |s| get_loop(s, &client, &floor, fixed.clone()),
        )
        .await;
        // The same at four times the connections: durable audit entries are group-committed, so
        // more concurrent requests share each fsync.
        let wide = LoadSpec { concurrency: concurrency * 4, ..spec };
        let wide_client = client_for(&scratch, "hearth-sqlite", wide.concurrency);
        let (hearth_read_wide, floor_read_wide) = load::alternating(
            wide,
            ROUNDS,
            |s| get_loop(s, &wide_client, &hearth, reads.clone()),
            |s| get_loop(s, &wide_client, &floor, fixed.clone()),
        )
        .await;
        // Refused requests: no token (401), and a token without the scope (403). Their audit
        // entries are queued, not waited for, so they should cost little more than the TLS
        // floor.
        let tls_ca = scratch.path("hearth-sqlite").join("tls/ca.pem");
        let observer = scoped_token(&scratch, "hearth-sqlite", "user/Observation.rs", None);
        let mut refusals = Vec::new();
        for (label, token, status) in
            [("401 no token (SQLite)", None, 401), ("403 out of scope (SQLite)", Some(observer.as_str()), 403)]
        {
            let refused_client = load::client(&tls_ca, concurrency, token);
            let (refused, floor_refused) = load::alternating(
                spec,
                ROUNDS,
                |s| status_loop(s, &refused_client, &hearth, reads.clone(), status),
                |s| get_loop(s, &client, &floor, fixed.clone()),
            )
            .await;
            refusals.push((label, refused, floor_refused));
        }
        drop(floor);
        for (label, refused, floor_refused) in &refusals {
            comparisons.push(Comparison::new(
                "1 TLS floor",
                (label, refused),
                ("axum+rustls fixed JSON", floor_refused),
                ">= 0.60",
                Some(0.60),
            ));
        }
        comparisons.push(Comparison::new(
            "1 TLS floor",
            ("Hearth read (SQLite)", &hearth_read),
            ("axum+rustls fixed JSON", &floor_read),
            ">= 0.40",
            Some(0.40),
        ));
        comparisons.push(Comparison::new(
            "1 TLS floor",
            (&format!("Hearth read (SQLite), {} conns", wide.concurrency), &hearth_read_wide),
            (&format!("fixed JSON, {} conns", wide.concurrency), &floor_read_wide),
            ">= 0.40",
            Some(0.40),
        ));
        if let Some(rss) = hearth.rss_mib() {
            memory.push((format!("hearth (SQLite) after seeding {seed_patients} patients and the read load"), rss));
        }
    }

    // Case 3: reads gated by 1 and by 3 Rust policy plugins vs the same server build ungated.
    let mut calls = Vec::new();
    if wanted(3) {
        eprintln!("case 3: policy-gated reads vs ungated reads; raw authorize vs native Rust");
        // The calls are synchronous, as in the server's blocking pool; this worker is given up
        // for the measurement.
        let iterations = if quick { 5_000 } else { 50_000 };
        match tokio::task::block_in_place(|| hearth_bench::plugins::raw_calls(iterations)) {
            Ok(comparisons) => calls.extend(comparisons),
            Err(error) => notes.push(format!("raw plugin call case skipped: {error}")),
        }
        // The consent plugin in JavaScript and Python next to its Rust twin (the plugin issue's
        // per-language cost table).
        let (languages, skipped) =
            tokio::task::block_in_place(|| hearth_bench::plugins::language_calls(if quick { 500 } else { 5_000 }));
        calls.extend(languages);
        notes.extend(skipped);
        match policy_cases(spec, &hearth_bin, &scratch, seed_patients).await {
            Ok((found, skipped)) => {
                comparisons.extend(found);
                notes.extend(skipped);
            }
            Err(error) => notes.push(format!("policy-gated read cases skipped: {error}")),
        }
    }

    // Case 4: single creates and reads, PostgreSQL vs SQLite, alternating.
    if wanted(4) {
        eprintln!("case 4: creates and reads, PostgreSQL vs SQLite");
        match ScratchPg::create(postgres_url).await {
            Ok(pg) => {
                let server = start_hearth("hearth-postgres", &hearth_bin, &scratch, Some(&pg.url), &[]);
                let pg_client = client_for(&scratch, "hearth-postgres", concurrency);
                let ids = seed(&pg_client, &server, seed_patients).await;
                let pg_reads: Arc<Vec<String>> = Arc::new(ids.iter().map(|id| format!("Patient/{id}")).collect());
                let (pg_read, sqlite_read) = load::alternating(
                    spec,
                    ROUNDS,
                    |s| get_loop(s, &pg_client, &server, pg_reads.clone()),
                    |s| get_loop(s, &client, &hearth, reads.clone()),
                )
                .await;
                let (pg_create, sqlite_create) = load::alternating(
                    spec,
                    ROUNDS,
                    |s| create_loop(s, &pg_client, &server),
                    |s| create_loop(s, &client, &hearth),
                )
                .await;
                drop(server);
                pg.drop_database().await;
                comparisons.push(Comparison::new(
                    "4 writes",
                    ("create Patient (PostgreSQL)", &pg_create),
                    ("create Patient (SQLite)", &sqlite_create),
                    "report",
                    None,
                ));
                comparisons.push(Comparison::new(
                    "4 reads",
                    ("read Patient (PostgreSQL)", &pg_read),
                    ("read Patient (SQLite)", &sqlite_read),
                    "report",
                    None,
                ));
            }
            Err(error) => notes.push(format!("PostgreSQL cases skipped: {error}")),
        }
    }
    drop(hearth);

    // Case 5 (search over a loaded data set) and the transaction-Bundle part of case 4.
    if wanted(4) || wanted(5) {
        let patients = search_patients.unwrap_or(if quick { 1_000 } else { 100_000 });
        let per_patient = 10;
        eprintln!(
            "case 4/5: ingest {patients} patients x {per_patient} observations as transaction Bundles, then search"
        );
        let server = start_hearth("search-sqlite", &hearth_bin, &scratch, None, &[]);
        let search_client = client_for(&scratch, "search-sqlite", concurrency);
        let sqlite_loaded = search_case::ingest(&search_client, &server, patients, per_patient, concurrency).await;
        if wanted(5) {
            let confined = confined_clients(&scratch, "search-sqlite", concurrency, &sqlite_loaded);
            comparisons.extend(
                search_case::measure(spec, &search_client, &server, &sqlite_loaded, "SQLite", confined.as_ref()).await,
            );
        }
        if let Some(rss) = server.rss_mib() {
            memory.push((format!("hearth (SQLite) after ingesting {patients} patients and the search load"), rss));
        }
        drop(server);
        match ScratchPg::create(postgres_url).await {
            Ok(pg) => {
                let server = start_hearth("search-postgres", &hearth_bin, &scratch, Some(&pg.url), &[]);
                let pg_client = client_for(&scratch, "search-postgres", concurrency);
                let pg_loaded = search_case::ingest(&pg_client, &server, patients, per_patient, concurrency).await;
                // Planner statistics, as autovacuum would have gathered them on a live system
                // (the load just happened; measuring before they exist measures a cold planner).
                pg.analyze().await;
                if wanted(5) {
                    let confined = confined_clients(&scratch, "search-postgres", concurrency, &pg_loaded);
                    comparisons.extend(
                        search_case::measure(spec, &pg_client, &server, &pg_loaded, "PostgreSQL", confined.as_ref())
                            .await,
                    );
                }
                if let Some(rss) = server.rss_mib() {
                    memory.push((
                        format!("hearth (PostgreSQL) after ingesting {patients} patients and the search load"),
                        rss,
                    ));
                }
                drop(server);
                pg.drop_database().await;
                comparisons.push(Comparison::new(
                    "4 transactions",
                    (&format!("{}-entry transaction Bundle (PostgreSQL)", per_patient + 1), &pg_loaded.ingest),
                    (&format!("{}-entry transaction Bundle (SQLite)", per_patient + 1), &sqlite_loaded.ingest),
                    "report",
                    None,
                ));
                notes.push(format!(
                    "transaction ingest of {} resources each: SQLite {:.0} resources/s, PostgreSQL {:.0} resources/s \
                     ({concurrency} Bundles in flight; every resource sealed, indexed and audited)",
                    sqlite_loaded.resources,
                    sqlite_loaded.resources as f64 / sqlite_loaded.ingest.elapsed.as_secs_f64(),
                    pg_loaded.resources as f64 / pg_loaded.ingest.elapsed.as_secs_f64(),
                ));
            }
            Err(error) => notes.push(format!("PostgreSQL search and ingest cases skipped: {error}")),
        }
    }

    // Case 6: bulk import (the hearth CLI) and Bulk Data export, PostgreSQL vs SQLite.
    if wanted(6) {
        let patients = search_patients.unwrap_or(if quick { 1_000 } else { 100_000 });
        eprintln!("case 6: hearth import of {patients} patients x 10 observations (NDJSON), then $export of them");
        let sqlite = bulk_on("bulk-sqlite", &hearth_bin, &scratch, None, patients).await;
        let postgres = match ScratchPg::create(postgres_url).await {
            Ok(pg) => {
                let run = bulk_on("bulk-postgres", &hearth_bin, &scratch, Some(&pg.url), patients).await;
                pg.drop_database().await;
                run
            }
            Err(error) => Err(error.to_string()),
        };
        if let (Ok(sqlite), Ok(postgres)) = (&sqlite, &postgres) {
            comparisons.push(Comparison::new(
                "6 bulk import",
                ("hearth import, resources (PostgreSQL)", &postgres.import),
                ("hearth import, resources (SQLite)", &sqlite.import),
                "report",
                None,
            ));
            comparisons.push(Comparison::new(
                "6 bulk export",
                ("$export download, resources (PostgreSQL)", &postgres.export),
                ("$export download, resources (SQLite)", &sqlite.export),
                "report",
                None,
            ));
        }
        for (database, run) in [("SQLite", &sqlite), ("PostgreSQL", &postgres)] {
            match run {
                Ok(run) => notes.push(format!(
                    "case 6 on {database}: {} resources imported at {:.0} resources/s (target on SQLite: >= 5,000) and \
                     exported at {:.0} resources/s (kick-off to last byte; every resource decrypted and passed \
                     through scopes and search policies)",
                    run.resources,
                    run.import.throughput(),
                    run.export.throughput()
                )),
                Err(error) => notes.push(format!("case 6 on {database} skipped: {error}")),
            }
        }
    }

    // Case 7: one vs two Hearth hosts on one PostgreSQL database.
    if wanted(7) {
        eprintln!("case 7: reads and creates through one vs two hosts on one PostgreSQL database");
        match scale_case::run(spec, &hearth_bin, &scratch, postgres_url, seed_patients).await {
            Ok(found) => comparisons.extend(found),
            Err(error) => notes.push(format!("case 7 skipped: {error}")),
        }
    }

    // Case 8: a hostile plugin under attack next to normal traffic, and memory over many calls.
    if wanted(8) {
        let calls = if quick { 10_000 } else { 100_000 };
        eprintln!("case 8: reads while 100 requests spin a plugin to its deadline; RSS over {calls} plugin calls");
        match hostile_case::run(spec, &hearth_bin, &scratch, seed_patients, calls).await {
            Ok(run) => {
                comparisons.extend(run.comparisons);
                notes.extend(run.notes);
                memory.extend(run.memory);
            }
            Err(error) => notes.push(format!("case 8 skipped: {error}")),
        }
    }

    // Case 2: encryption on vs the same build storing plaintext, SQLite, alternating.
    if wanted(2) {
        eprintln!("case 2: encrypted vs plaintext store");
        let encrypted = start_hearth("bench-encrypted", &bench_bin, &scratch, None, &[]);
        let plaintext = start_hearth("bench-plaintext", &bench_bin, &scratch, None, &[("HEARTH_BENCH_PLAINTEXT", "1")]);
        let enc_client = client_for(&scratch, "bench-encrypted", concurrency);
        let plain_client = client_for(&scratch, "bench-plaintext", concurrency);
        let (enc_create, plain_create) = load::alternating(
            spec,
            ROUNDS,
            |s| create_loop(s, &enc_client, &encrypted),
            |s| create_loop(s, &plain_client, &plaintext),
        )
        .await;
        let enc_ids = seed(&enc_client, &encrypted, seed_patients).await;
        let plain_ids = seed(&plain_client, &plaintext, seed_patients).await;
        let enc_paths: Arc<Vec<String>> = Arc::new(enc_ids.iter().map(|id| format!("Patient/{id}")).collect());
        let plain_paths: Arc<Vec<String>> = Arc::new(plain_ids.iter().map(|id| format!("Patient/{id}")).collect());
        let (enc_read, plain_read) = load::alternating(
            spec,
            ROUNDS,
            |s| get_loop(s, &enc_client, &encrypted, enc_paths.clone()),
            |s| get_loop(s, &plain_client, &plaintext, plain_paths.clone()),
        )
        .await;
        comparisons.push(Comparison::new(
            "2 encryption",
            ("create Patient, encrypted", &enc_create),
            ("create Patient, plaintext", &plain_create),
            ">= 0.90",
            Some(0.90),
        ));
        comparisons.push(Comparison::new(
            "2 encryption",
            ("read, encrypted", &enc_read),
            ("read, plaintext", &plain_read),
            ">= 0.90",
            Some(0.90),
        ));
        let (enc_obs, plain_obs) = load::alternating(
            spec,
            ROUNDS,
            |s| observation_loop(s, &enc_client, &encrypted, Arc::new(enc_ids.clone())),
            |s| observation_loop(s, &plain_client, &plaintext, Arc::new(plain_ids.clone())),
        )
        .await;
        comparisons.push(Comparison::new(
            "2 encryption",
            ("create Observation, encrypted", &enc_obs),
            ("create Observation, plaintext", &plain_obs),
            ">= 0.90",
            Some(0.90),
        ));
        drop(encrypted);
        drop(plaintext);
    }

    let report = Report {
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        machine: machine_description(),
        mode: if quick { "quick" } else { "full" }.to_owned(),
        concurrency,
        seconds_per_measurement: spec.duration.as_secs_f64(),
        comparisons,
        calls,
        memory_mib: memory,
        notes,
    };
    report.print();
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent).expect("results directory");
    }
    std::fs::write(output, serde_json::to_vec_pretty(&report).expect("JSON")).expect("write report");
    println!("\nwrote {}", output.display());
}

/// Reads through 1 policy plugin (redact) and through 3 (consent, with its Consent lookup;
/// redact; validate) against an ungated server of the same build, alternating.
async fn policy_cases(
    spec: LoadSpec,
    hearth_bin: &Path,
    scratch: &Scratch,
    seed_patients: usize,
) -> Result<(Vec<Comparison>, Vec<String>), String> {
    let one = scratch.path("policies-one");
    let three = scratch.path("policies-three");
    for dir in [&one, &three] {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    let binding = |plugin: &str| format!("[[binding]]\nplugin = \"{plugin}\"\ninteractions = [\"read\"]\n\n");
    std::fs::write(one.join("b.toml"), binding("redact")).map_err(|e| e.to_string())?;
    let all = ["consent", "redact", "validate"].map(binding).concat();
    std::fs::write(three.join("b.toml"), all).map_err(|e| e.to_string())?;
    let one_dir = one.display().to_string();
    let three_dir = three.display().to_string();
    let ungated = start_hearth("ungated", hearth_bin, scratch, None, &[]);
    let gated = start_hearth("gated-one", hearth_bin, scratch, None, &[("HEARTH_POLICIES", one_dir.as_str())]);
    let gated3 = start_hearth("gated-three", hearth_bin, scratch, None, &[("HEARTH_POLICIES", three_dir.as_str())]);
    hearth_bench::plugins::load_into(&scratch.path("gated-one"), &gated.base, "redact").await?;
    for name in ["consent", "redact", "validate"] {
        hearth_bench::plugins::load_into(&scratch.path("gated-three"), &gated3.base, name).await?;
    }
    let clients = [
        client_for(scratch, "ungated", spec.concurrency),
        client_for(scratch, "gated-one", spec.concurrency),
        client_for(scratch, "gated-three", spec.concurrency),
    ];
    let mut paths = Vec::new();
    for (client, server) in clients.iter().zip([&ungated, &gated, &gated3]) {
        let ids = seed(client, server, seed_patients).await;
        paths.push(Arc::new(ids.iter().map(|id| format!("Patient/{id}")).collect::<Vec<_>>()));
    }
    let (gated_read, ungated_read) = load::alternating(
        spec,
        ROUNDS,
        |s| get_loop(s, &clients[1], &gated, paths[1].clone()),
        |s| get_loop(s, &clients[0], &ungated, paths[0].clone()),
    )
    .await;
    let (gated3_read, ungated_read3) = load::alternating(
        spec,
        ROUNDS,
        |s| get_loop(s, &clients[2], &gated3, paths[2].clone()),
        |s| get_loop(s, &clients[0], &ungated, paths[0].clone()),
    )
    .await;
    drop((gated, gated3));
    let mut found = vec![
        Comparison::new(
            "3 policy plugins",
            ("read, 1 Rust policy (redact)", &gated_read),
            ("read, no policy", &ungated_read),
            ">= 0.85",
            Some(0.85),
        ),
        Comparison::new(
            "3 policy plugins",
            ("read, 3 Rust policies", &gated3_read),
            ("read, no policy", &ungated_read3),
            "report",
            None,
        ),
    ];

    // The same policy (consent: each read looks up the patient's active Consents through the
    // host) in each language, one server at a time, against the same ungated server.
    let consent = scratch.path("policies-consent");
    std::fs::create_dir_all(&consent).map_err(|e| e.to_string())?;
    std::fs::write(consent.join("b.toml"), binding("consent")).map_err(|e| e.to_string())?;
    let consent_dir = consent.display().to_string();
    let mut skipped = Vec::new();
    for (lang, label) in [("rust", "Rust"), ("javascript", "JavaScript"), ("python", "Python")] {
        let name = format!("consent-{lang}");
        let server = start_hearth(&name, hearth_bin, scratch, None, &[("HEARTH_POLICIES", consent_dir.as_str())]);
        let data = scratch.path(&name);
        let loaded = match lang {
            "rust" => hearth_bench::plugins::load_into(&data, &server.base, "consent").await,
            _ => hearth_bench::plugins::load_language_consent(&data, &server.base, "consent", lang).await,
        };
        if let Err(error) = loaded {
            skipped.push(format!("read through the {label} consent policy skipped: {error}"));
            continue;
        }
        let client = client_for(scratch, &name, spec.concurrency);
        let ids = seed(&client, &server, seed_patients).await;
        let reads = Arc::new(ids.iter().map(|id| format!("Patient/{id}")).collect::<Vec<_>>());
        let (through, plain) = load::alternating(
            spec,
            ROUNDS,
            |s| get_loop(s, &client, &server, reads.clone()),
            |s| get_loop(s, &clients[0], &ungated, paths[0].clone()),
        )
        .await;
        found.push(Comparison::new(
            "3 policy plugins",
            (&format!("read, 1 {label} policy (consent)"), &through),
            ("read, no policy", &plain),
            "report",
            None,
        ));
    }
    Ok((found, skipped))
}

/// Creates `count` patients (each with one observation) and returns the patient ids.
async fn seed(client: &reqwest::Client, server: &ServerProcess, count: usize) -> Vec<String> {
    let mut rng = Rng::new(7);
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let response = client
            .post(server.url("Patient"))
            .header("content-type", "application/fhir+json")
            .header("prefer", "return=minimal")
            .body(data::patient(&mut rng, n as u64).to_string())
            .send()
            .await
            .expect("seed patient");
        assert_eq!(response.status().as_u16(), 201, "seeding {}", server.name);
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).expect("Location").to_owned();
        let id = location.split('/').rev().nth(2).expect("id in Location").to_owned();
        let observation = data::observation(&mut rng, &id);
        let response = client
            .post(server.url("Observation"))
            .header("content-type", "application/fhir+json")
            .header("prefer", "return=minimal")
            .body(observation.to_string())
            .send()
            .await
            .expect("seed observation");
        assert_eq!(response.status().as_u16(), 201);
        ids.push(id);
    }
    ids
}

async fn get_loop(
    spec: LoadSpec,
    client: &reqwest::Client,
    server: &ServerProcess,
    paths: Arc<Vec<String>>,
) -> Measurement {
    get_urls(spec, client, Arc::new(paths.iter().map(|p| server.url(p)).collect())).await
}

/// GETs of `paths` on `server` that must answer `status` (refusals).
async fn status_loop(
    spec: LoadSpec,
    client: &reqwest::Client,
    server: &ServerProcess,
    paths: Arc<Vec<String>>,
    status: u16,
) -> Measurement {
    fetch_urls(spec, client, Arc::new(paths.iter().map(|p| server.url(p)).collect()), Some(status)).await
}

/// GETs of `urls` (any servers), spread over the list.
async fn get_urls(spec: LoadSpec, client: &reqwest::Client, urls: Arc<Vec<String>>) -> Measurement {
    fetch_urls(spec, client, urls, None).await
}

/// GETs of `urls`, each counted as served when it answers `status` (`None`: any success).
async fn fetch_urls(
    spec: LoadSpec,
    client: &reqwest::Client,
    urls: Arc<Vec<String>>,
    status: Option<u16>,
) -> Measurement {
    let client = client.clone();
    load::run(spec, move |_, n| {
        let url = urls[(n as usize).wrapping_mul(2_654_435_761) % urls.len()].clone();
        let client = client.clone();
        async move {
            match client.get(url).send().await {
                Ok(response) => {
                    let wanted = match status {
                        Some(status) => response.status().as_u16() == status,
                        None => response.status().is_success(),
                    };
                    wanted && response.bytes().await.is_ok()
                }
                Err(_) => false,
            }
        }
    })
    .await
}

/// Creates a new Patient per request (each a new patient compartment: a new data key).
async fn create_loop(spec: LoadSpec, client: &reqwest::Client, server: &ServerProcess) -> Measurement {
    post_loop(spec, client, server, "Patient", new_patients()).await
}

fn new_patients() -> Generator {
    Arc::new(|worker, n| data::patient(&mut Rng::new(n ^ ((worker as u64) << 40)), n))
}

/// Creates an Observation per request for one of `patient_ids` (existing compartments).
async fn observation_loop(
    spec: LoadSpec,
    client: &reqwest::Client,
    server: &ServerProcess,
    patient_ids: Arc<Vec<String>>,
) -> Measurement {
    post_loop(
        spec,
        client,
        server,
        "Observation",
        Arc::new(move |worker, n| {
            let mut rng = Rng::new(n ^ ((worker as u64) << 40));
            let patient = &patient_ids[rng.below(patient_ids.len())];
            data::observation(&mut rng, patient)
        }),
    )
    .await
}

type Generator = Arc<dyn Fn(usize, u64) -> serde_json::Value + Send + Sync>;

async fn post_loop(
    spec: LoadSpec,
    client: &reqwest::Client,
    server: &ServerProcess,
    res_type: &str,
    generate: Generator,
) -> Measurement {
    post_urls(spec, client, vec![server.url(res_type)], generate).await
}

/// POSTs of `generate`d resources, worker `w` posting to `urls[w % urls.len()]`.
async fn post_urls(spec: LoadSpec, client: &reqwest::Client, urls: Vec<String>, generate: Generator) -> Measurement {
    let client = client.clone();
    load::run(spec, move |worker, n| {
        let body = generate(worker, n).to_string();
        let url = &urls[worker % urls.len()];
        let request = client.post(url.clone()).header("content-type", "application/fhir+json").body(body);
        async move {
            match request.send().await {
                Ok(response) => response.status().as_u16() == 201 && response.bytes().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

/// A scratch PostgreSQL database for one run.
struct ScratchPg {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchPg {
    async fn create(admin_url: &str) -> Result<ScratchPg, String> {
        use sqlx::Connection;
        let name = format!("hearth_bench_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(admin_url).await.map_err(|e| e.to_string())?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let base = admin_url.rsplit_once('/').map_or(admin_url, |(base, _)| base);
        Ok(ScratchPg { admin_url: admin_url.to_owned(), url: format!("{base}/{name}"), name })
    }

    async fn analyze(&self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.url).await {
            let _ = sqlx::raw_sql("ANALYZE").execute(&mut conn).await;
        }
    }

    async fn drop_database(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&mut conn)
                .await;
        }
    }
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB; load generator on the same cores")
}
