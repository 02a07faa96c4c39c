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

/// Reads until the server closes (or `limit` passes); what it sent, and how long it took.
async fn read_until_closed(tls: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(started.elapsed()), tls.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
    (String::from_utf8_lossy(&received).into_owned(), started.elapsed())
}

/// Issue 22, repro 11: a TLS connection that sends nothing stayed open past 25 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed() {
    let server = Server::start(Db::Sqlite).await;
    let mut tls = crate::harness::raw_tls(&server).await;
    let (_, waited) = read_until_closed(&mut tls, Duration::from_secs(25)).await;
    assert!(waited >= Duration::from_secs(5), "closed by the first-request deadline, not at once ({waited:?})");
    assert_eq!(server.get("healthz").await.status, 200);
}

/// Issue 22, repro 11: a request body trickling in held the connection (to the API and to the
/// unauthenticated console sign-in alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_in_is_cut_off() {
    let server = Server::start(Db::Sqlite).await;
    for (path, content_type) in
        [("Patient", "application/fhir+json"), ("console/login", "application/x-www-form-urlencoded")]
    {
        let mut tls = crate::harness::raw_tls(&server).await;
        let head = format!(
            "POST /{path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        let trickle = async {
            for _ in 0..40 {
                if tls.write_all(b"x").await.is_err() || tls.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let started = Instant::now();
        trickle.await;
        let (answer, _) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(30), "{path}: the trickle was allowed for {waited:?}");
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "{path}: {answer}");
    }
    assert_eq!(server.get("healthz").await.status, 200);
}
