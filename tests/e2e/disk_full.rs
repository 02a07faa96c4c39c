//! The database's disk fills up: writes (and, since every request leaves an audit entry,
//! anything that cannot be audited) fail with a clear 507 OperationOutcome instead of a crash
//! or a 500; the server keeps answering; once space returns, writes succeed again without a
//! restart, every acknowledged write reads back and the audit chain verifies. SQLite on a small
//! tmpfs mounted for the test (needs root, as CI runs; skipped with a message otherwise).

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use crate::harness::{Db, Launch, Server};

/// A tmpfs mounted on a fresh directory for one test, unmounted when dropped.
struct Volume {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Volume {
    /// `None` (with a message) where mounting needs a root this process does not have.
    fn mount(size: &str) -> Option<Volume> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::create_dir(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        Some(Volume { path, _dir: dir })
    }

    /// `mount -o remount,OPTIONS`, e.g. `size=64m` or `ro`.
    fn remount(&self, options: &str) {
        let status =
            Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(&self.path).status().unwrap();
        assert!(status.success(), "remount {options}");
    }

    /// A server launch whose data directory is this volume (its log stays outside).
    fn launch(&self) -> Launch {
        Launch { data_dir: Some(self.path.clone()), ..Launch::default() }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_and_recovers_when_space_returns() {
    // The data directory is the small volume.
    let Some(volume) = Volume::mount("6m") else { return };
    let server = Server::launch(Db::Sqlite, volume.launch()).await;
    let filler = "x".repeat(20_000);
    let mut acknowledged = Vec::new();
    let mut full = None;
    for n in 0..2_000 {
        let patient = json!({"resourceType": "Patient", "name": [{"family": format!("Full-{n}")}],
                             "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{filler}{n}</div>")}});
        let reply = server.post("Patient", &patient).await;
        match reply.status {
            201 => acknowledged.push(reply.header("location").unwrap().to_owned()),
            507 => {
                full = Some(reply);
                break;
            }
            other => panic!("while filling the disk: HTTP {other} {}", String::from_utf8_lossy(&reply.bytes)),
        }
    }
    let full = full.expect("the 6 MiB volume filled up");
    let message = full.expect_outcome(507, "exception");
    assert!(message.contains("out of space"), "{message}");
    // Still answering, clearly, while full.
    for _ in 0..5 {
        let reply = server
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "text": {"status": "generated",
            "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{filler}</div>")}}),
            )
            .await;
        assert_eq!(reply.status, 507, "{}", String::from_utf8_lossy(&reply.bytes));
        let read = server.get(&format!("Patient/{}", id_of(&acknowledged[0]))).await;
        assert!(matches!(read.status, 200 | 507), "{}", read.status);
    }
    assert_eq!(server.get("healthz").await.status, 200, "the process is alive and answering");

    // Space returns: writes work again, without a restart.
    volume.remount("size=64m");
    server.post("Patient", &json!({"resourceType": "Patient"})).await.expect(201);
    for location in &acknowledged {
        server.get(&format!("Patient/{}", id_of(location))).await.expect(200);
    }
    let verify = server.hearth(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    eprintln!("{} writes acknowledged before the volume filled", acknowledged.len());
}

/// The database's file system is read-only when the server starts (a failing disk the kernel
/// remounted read-only, a restored volume mounted read-only): the server refuses to start with
/// a message that says so and what to check, damages nothing, and starts normally with every
/// acknowledged write once the volume is writable. (A file system cannot be remounted
/// read-only while the server holds its files open for writing, so this is where it shows.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_is_refused_clearly_and_nothing_is_lost() {
    let Some(volume) = Volume::mount("64m") else { return };
    let mut server = Server::launch(Db::Sqlite, volume.launch()).await;
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let reply =
            server.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": format!("Ro-{n}")}]})).await;
        reply.expect(201);
        acknowledged.push(reply.header("location").unwrap().to_owned());
    }
    server.terminate().expect("clean stop");
    drop(server);
    volume.remount("ro");

    let data = volume.path.to_str().unwrap();
    let refused = crate::harness::hearth_command(&["serve", "--dev", "--data-dir", data, "--listen", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started on a read-only volume: {stderr}");
    assert!(stderr.to_lowercase().contains("read-only file system"), "the reason is named: {stderr}");
    assert!(!stderr.contains("database server is running"), "no misleading advice: {stderr}");
    assert!(stderr.contains("mounted read-write"), "what to do is said: {stderr}");

    volume.remount("rw");
    let server = Server::launch(Db::Sqlite, volume.launch()).await;
    for location in &acknowledged {
        server.get(&format!("Patient/{}", id_of(location))).await.expect(200);
    }
    server.post("Patient", &json!({"resourceType": "Patient"})).await.expect(201);
    let verify = server.hearth(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}

fn id_of(location: &str) -> &str {
    location.split_once("/Patient/").unwrap().1.split('/').next().unwrap()
}
