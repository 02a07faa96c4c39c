//! PostgreSQL high availability: a pg_auto_failover monitor, primary and standby on this machine
//! (own ports and data directories), Hearth connected with a multi-host URL. Three times in a
//! row the primary's whole node (keeper and PostgreSQL) is SIGKILLed under write load: writes
//! answer 503 with Retry-After while the standby is promoted (never 500, never a wrong answer),
//! Hearth follows the new primary without a restart, every acknowledged write reads back, the
//! killed node rejoins as the standby, and the audit chain verifies at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, Row};

use crate::harness::{Db, Launch, Server, hearth_command};

/// One pg_auto_failover formation: the monitor and two nodes, each run in a process group of
/// its own so that killing a node kills its keeper and its PostgreSQL together.
struct Formation {
    dir: tempfile::TempDir,
    bin: PathBuf,
    monitor_port: u16,
    node_ports: [u16; 2],
    groups: Mutex<Vec<Child>>,
    root: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Formation {
    fn new() -> Formation {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .max()
            .expect("a PostgreSQL version");
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let dir = tempfile::tempdir().unwrap();
        if root {
            // PostgreSQL refuses to run as root: the nodes run as the postgres user.
            let chown = Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).status().unwrap();
            assert!(chown.success());
        }
        Formation {
            dir,
            bin: PathBuf::from(format!("/usr/lib/postgresql/{version}/bin")),
            monitor_port: free_port(),
            node_ports: [free_port(), free_port()],
            groups: Mutex::new(Vec::new()),
            root,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `pg_autoctl ARGS` as the user PostgreSQL runs as.
    fn pg_autoctl(&self, args: &[&str]) -> Command {
        let mut command = if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "pg_autoctl"]);
            c
        } else {
            Command::new("pg_autoctl")
        };
        command
            .args(args)
            .env("PATH", format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", self.bin.display()))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_DATA_HOME", self.path("state"))
            .current_dir(self.dir.path());
        command
    }

    /// Starts `pg_autoctl ARGS` in a process group of its own, logging to `log`.
    fn spawn(&self, args: &[&str], log: &str) -> u32 {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path(log)).unwrap();
        let child = self
            .pg_autoctl(args)
            .process_group(0)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("pg_autoctl runs (the README test command installs pg_auto_failover)");
        let pid = child.id();
        self.groups.lock().unwrap().push(child);
        pid
    }

    fn monitor_uri(&self) -> String {
        format!("postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable", self.monitor_port)
    }

    /// The URL Hearth connects with: both nodes, the one that accepts writes chosen.
    fn hearth_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/hearth?target_session_attrs=read-write",
            self.node_ports[0], self.node_ports[1]
        )
    }

    fn node_dir(&self, node: usize) -> String {
        self.path(&format!("node{}", node + 1)).display().to_string()
    }

    /// `pg_autoctl create KIND` on `port` (loopback, trust, no TLS: a test on one machine), then
    /// running, in a process group of its own.
    fn create(&self, kind: &str, pgdata: &str, port: u16, extra: &[&str], log: &str) -> u32 {
        let port = port.to_string();
        let mut args = vec![
            "create",
            kind,
            "--pgdata",
            pgdata,
            "--pgport",
            &port,
            "--hostname",
            "127.0.0.1",
            "--auth",
            "trust",
            "--no-ssl",
        ];
        args.extend_from_slice(extra);
        args.push("--run");
        self.spawn(&args, log)
    }

    fn start_monitor(&self) {
        let pgdata = self.path("monitor").display().to_string();
        self.create("monitor", &pgdata, self.monitor_port, &[], "monitor.log");
    }

    /// Creates node `node` (0 or 1) and runs its keeper; or, once created, runs its keeper again.
    fn start_node(&self, node: usize) -> u32 {
        let pgdata = self.node_dir(node);
        let log = format!("node{}.log", node + 1);
        if Path::new(&pgdata).join("postgresql.conf").exists() {
            return self.spawn(&["run", "--pgdata", &pgdata], &log);
        }
        let monitor = self.monitor_uri();
        self.create("postgres", &pgdata, self.node_ports[node], &["--monitor", &monitor, "--dbname", "hearth"], &log)
    }

    /// The port of the node the monitor reports as primary.
    async fn primary_port(&self) -> u16 {
        let states = self.states().await;
        states
            .iter()
            .find(|(_, s)| matches!(s.as_str(), "primary" | "wait_primary" | "single"))
            .map(|(p, _)| *p)
            .unwrap_or_else(|| panic!("no primary in {states:?}"))
    }

    /// The monitor's process group (the first one started).
    fn monitor_group(&self) -> u32 {
        self.groups.lock().unwrap()[0].id()
    }

    /// SIGKILLs a node's whole process group (keeper, its services and PostgreSQL).
    fn kill_group(&self, pgid: u32) {
        let status = Command::new("kill").args(["-9", "--", &format!("-{pgid}")]).status().unwrap();
        assert!(status.success(), "kill the process group {pgid}");
    }

    async fn connect(&self, port: u16, database: &str) -> Option<sqlx::PgConnection> {
        let url = format!("postgres://postgres@127.0.0.1:{port}/{database}?sslmode=disable");
        tokio::time::timeout(Duration::from_secs(2), sqlx::PgConnection::connect(&url)).await.ok()?.ok()
    }

    /// Each node's state as the monitor reports it, by port.
    async fn states(&self) -> Vec<(u16, String)> {
        let Some(mut monitor) = self.connect(self.monitor_port, "pg_auto_failover").await else { return Vec::new() };
        sqlx::query("SELECT nodeport, reportedstate::text FROM pgautofailover.node ORDER BY nodeport")
            .fetch_all(&mut monitor)
            .await
            .map(|rows| rows.iter().map(|r| (r.get::<i32, _>(0) as u16, r.get::<String, _>(1))).collect())
            .unwrap_or_default()
    }

    /// Waits until the monitor reports `want` for the node on `port`, running a CHECKPOINT on
    /// the other node meanwhile (a standby's base backup waits for one).
    async fn wait_for(&self, port: u16, want: &[&str], what: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let states = self.states().await;
            if states.iter().any(|(p, s)| *p == port && want.contains(&s.as_str())) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the monitor reports {states:?}; logs in {}",
                self.dir.path().display()
            );
            for other in self.node_ports.iter().filter(|p| **p != port) {
                if let Some(mut conn) = self.connect(*other, "postgres").await {
                    let _ = sqlx::query("CHECKPOINT").execute(&mut conn).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Fails over quickly: the monitor declares a node unhealthy after 3 s and promotes the
    /// standby without waiting 30 s for the old primary to demote itself (safe here: with
    /// synchronous replication an isolated old primary cannot acknowledge a write).
    async fn tune_monitor(&self) {
        let mut monitor = self.connect(self.monitor_port, "pg_auto_failover").await.expect("the monitor answers");
        for (name, value) in [
            ("health_check_period", "1000"),
            ("health_check_timeout", "1000"),
            ("health_check_max_retries", "1"),
            ("health_check_retry_delay", "1000"),
            ("node_considered_unhealthy_timeout", "3000"),
            ("primary_demote_timeout", "3000"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER SYSTEM SET pgautofailover.{name} = '{value}'")))
                .execute(&mut monitor)
                .await
                .unwrap();
        }
        sqlx::query("SELECT pg_reload_conf()").execute(&mut monitor).await.unwrap();
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        for child in self.groups.lock().unwrap().iter_mut() {
            let _ = Command::new("kill").args(["-9", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
        }
    }
}

/// What the writers saw.
#[derive(Default)]
struct Load {
    acknowledged: Vec<String>,
    /// (seconds since the load started, status) of every answer.
    answers: Vec<(f64, u16)>,
    missing_retry_after: usize,
}

/// Writes new Patients from four clients, runs `kill` 2 s in, and goes on until writes have
/// succeeded again for 3 s (40 s at most). Only 201 and 503 (with Retry-After) may come back,
/// writes must come back within 20 s, and every acknowledged one must read back.
async fn write_through(server: &Arc<Server>, label: &str, kill: impl FnOnce()) {
    static ROUND: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let load = Arc::new(Mutex::new(Load::default()));
    let started = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (server, load, stop) = (server.clone(), load.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let id = format!("r{round}-w{writer}-{i}");
                let reply = server.put(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id})).await;
                {
                    let mut load = load.lock().unwrap();
                    load.answers.push((started.elapsed().as_secs_f64(), reply.status));
                    match reply.status {
                        201 => load.acknowledged.push(id),
                        503 if reply.header("retry-after").is_none() => load.missing_retry_after += 1,
                        _ => {}
                    }
                }
                if reply.status != 201 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = started.elapsed().as_secs_f64();
    kill();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let first_after = {
            let load = load.lock().unwrap();
            load.answers.iter().find(|(t, s)| *t > killed_at + 0.5 && *s == 201).map(|(t, _)| *t)
        };
        if first_after.is_some_and(|t| started.elapsed().as_secs_f64() > t + 3.0) || Instant::now() > deadline {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let load = std::mem::take(&mut *load.lock().unwrap());
    let wrong: Vec<&(f64, u16)> = load.answers.iter().filter(|(_, s)| !matches!(s, 201 | 503)).collect();
    assert!(wrong.is_empty(), "{label}: only 201 or 503 while the database changes, got {wrong:?}");
    assert_eq!(load.missing_retry_after, 0, "{label}: every 503 says when to retry");
    let mut ok_times: Vec<f64> = load.answers.iter().filter(|(_, s)| *s == 201).map(|(t, _)| *t).collect();
    ok_times.sort_by(f64::total_cmp);
    let resumed = ok_times.iter().find(|t| **t > killed_at + 0.5).copied().expect("writes resumed after the kill");
    // The longest stretch without a successful write, from just before the kill on.
    let window: Vec<f64> = ok_times.iter().copied().filter(|t| *t >= killed_at - 0.5).collect();
    let gap = window.windows(2).map(|w| w[1] - w[0]).fold(resumed - killed_at, f64::max);
    let refused = load.answers.iter().filter(|(_, s)| *s == 503).count();
    println!(
        "{label} at {killed_at:.2} s: longest time without a successful write {gap:.2} s; {refused} answers 503; \
         {} writes acknowledged",
        load.acknowledged.len()
    );
    assert!(gap < 20.0, "{label}: writes came back after {gap:.1} s");
    for id in &load.acknowledged {
        server.get(&format!("Patient/{id}")).await.expect(200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_dies_three_times_and_nothing_acknowledged_is_lost() {
    let formation = Formation::new();
    formation.start_monitor();
    let deadline = Instant::now() + Duration::from_secs(60);
    while formation.connect(formation.monitor_port, "pg_auto_failover").await.is_none() {
        assert!(Instant::now() < deadline, "the monitor did not start: {}", formation.dir.path().display());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    formation.tune_monitor().await;
    let mut groups = [formation.start_node(0), 0];
    formation.wait_for(formation.node_ports[0], &["single", "primary", "wait_primary"], "the first node").await;
    groups[1] = formation.start_node(1);
    formation.wait_for(formation.node_ports[1], &["secondary"], "the standby").await;

    let url = formation.hearth_url();
    let launch =
        Launch { no_database_flag: true, extra_args: vec!["--database-url".into(), url.clone()], ..Launch::default() };
    let server = Arc::new(Server::launch(Db::Postgres, launch).await);

    for round in 0..3 {
        let primary_port = formation.primary_port().await;
        let victim = formation.node_ports.iter().position(|p| *p == primary_port).unwrap();
        let survivor_port = formation.node_ports[1 - victim];
        let label = format!("round {round}: the primary (port {primary_port}) killed");
        write_through(&server, &label, || formation.kill_group(groups[victim])).await;
        formation.wait_for(survivor_port, &["primary", "wait_primary"], "the promoted standby").await;
        // The killed node comes back and rejoins as the standby.
        groups[victim] = formation.start_node(victim);
        formation.wait_for(primary_port, &["secondary"], "the old primary rejoining").await;
    }

    // The standby dies: the primary stops waiting for it and writes go on.
    let primary_port = formation.primary_port().await;
    let standby = formation.node_ports.iter().position(|p| *p != primary_port).unwrap();
    write_through(&server, "the standby killed", || formation.kill_group(groups[standby])).await;
    formation.start_node(standby);
    formation.wait_for(formation.node_ports[standby], &["secondary"], "the standby rejoining").await;

    // The monitor dies: nothing fails over then, but the primary keeps serving.
    let monitor = formation.monitor_group();
    write_through(&server, "the monitor killed", || formation.kill_group(monitor)).await;

    // The audit chain is whole, checked by a second process through the same multi-host URL.
    let keyring = server.keyring();
    let verify = hearth_command(&[
        "audit",
        "verify",
        "--database-url",
        &url,
        "--keyring",
        keyring.to_str().unwrap(),
        "--data-dir",
        server.data_dir.to_str().unwrap(),
    ]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(server.log().contains("the PostgreSQL primary moved"), "the server followed the primary");
}
