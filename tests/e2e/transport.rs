//! Transport abuse: protocol downgrades and clients that hold connections open without
//! finishing a request.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Db, Server};

fn port_of(server: &Server) -> u16 {
    server.base.rsplit(':').next().unwrap().parse().unwrap()
}

/// Runs `openssl s_client` with `protocol` (e.g. `-tls1_1`) and returns whether a handshake
/// completed. The client side is told to allow old protocols, so a failure is the server's.
fn handshake_with(server: &Server, protocol: &str) -> bool {
    let output = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", port_of(server)),
            protocol,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-brief",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the openssl command line tool is needed for this test");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    text.contains("CONNECTION ESTABLISHED")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_are_spoken() {
    let server = Server::start(Db::Sqlite).await;
    assert!(handshake_with(&server, "-tls1_3"), "TLS 1.3 works");
    assert!(handshake_with(&server, "-tls1_2"), "TLS 1.2 works");
    assert!(!handshake_with(&server, "-tls1_1"), "TLS 1.1 is refused");
    assert!(!handshake_with(&server, "-tls1"), "TLS 1.0 is refused");
    assert_eq!(server.get("healthz").await.status, 200, "the server keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let server = Server::start(Db::Sqlite).await;
    let mut tls = crate::harness::raw_tls(&server).await;
    // Headers started, never finished (slowloris).
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").await.unwrap();
    tls.flush().await.unwrap();
    let started = Instant::now();
    // Meanwhile others are served.
    assert_eq!(server.get("healthz").await.status, 200);
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(30), tls.read(&mut buffer)).await;
    let waited = started.elapsed();
    match read {
        Ok(Ok(n)) => {
            // Either a plain close (0 bytes) or a 408 before closing.
            let text = String::from_utf8_lossy(&buffer[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "unexpected answer: {text}");
        }
        Ok(Err(_)) => {} // reset
        Err(_) => panic!("the server kept a half-sent request open for 30 s"),
    }
    assert!(waited >= Duration::from_secs(5), "cut off by the header timeout, not at once ({waited:?})");
}
