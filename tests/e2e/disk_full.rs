//! The database's disk fills up: writes (and, since every request leaves an audit entry,
//! anything that cannot be audited) fail with a clear 507 OperationOutcome instead of a crash
//! or a 500; the server keeps answering; once space returns, writes succeed again without a
//! restart, every acknowledged write reads back and the audit chain verifies. SQLite on a small
//! tmpfs mounted for the test (needs root, as CI runs; skipped with a message otherwise).

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::harness::{Db, Launch, Server};

fn mount(dir: &Path, size: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

fn remount(dir: &Path, size: &str) {
    let status = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(dir).status().unwrap();
    assert!(status.success(), "remount {size}");
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507_and_recovers_when_space_returns() {
    // The data directory is the small volume; the server's log sits beside it, outside.
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("data");
    std::fs::create_dir(&volume).unwrap();
    if !mount(&volume, "6m") {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let _unmount = Unmount(&volume);
    let launch = Launch { data_dir: Some(volume.clone()), ..Launch::default() };
    let server = Server::launch(Db::Sqlite, launch).await;
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
    remount(&volume, "64m");
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
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("data");
    std::fs::create_dir(&volume).unwrap();
    if !mount(&volume, "64m") {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let _unmount = Unmount(&volume);
    let launch = || Launch { data_dir: Some(volume.clone()), ..Launch::default() };
    let mut server = Server::launch(Db::Sqlite, launch()).await;
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let reply =
            server.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": format!("Ro-{n}")}]})).await;
        reply.expect(201);
        acknowledged.push(reply.header("location").unwrap().to_owned());
    }
    server.terminate().expect("clean stop");
    drop(server);
    let status = Command::new("mount").args(["-o", "remount,ro"]).arg(&volume).status().unwrap();
    assert!(status.success(), "remount read-only");

    let data = volume.to_str().unwrap();
    let refused = crate::harness::hearth_command(&["serve", "--dev", "--data-dir", data, "--listen", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "started on a read-only volume: {stderr}");
    assert!(stderr.to_lowercase().contains("read-only file system"), "the reason is named: {stderr}");
    assert!(!stderr.contains("database server is running"), "no misleading advice: {stderr}");
    assert!(stderr.contains("mounted read-write"), "what to do is said: {stderr}");

    let status = Command::new("mount").args(["-o", "remount,rw"]).arg(&volume).status().unwrap();
    assert!(status.success(), "remount read-write");
    let server = Server::launch(Db::Sqlite, launch()).await;
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
