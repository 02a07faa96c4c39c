//! The HTTPS listener: accepts TCP connections, completes TLS handshakes (with a deadline),
//! serves HTTP/1.1 and HTTP/2 through the axum router, and shuts down gracefully: on the
//! shutdown signal it stops accepting, lets in-flight requests finish, then returns.
//!
//! What a slow or silent client can hold is bounded (slowloris): the TLS handshake, the first
//! request and each request's headers have deadlines, a connection with no request in flight
//! and no traffic is closed, and a request body must keep arriving (see [`PacedBody`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Deadline for a client to complete the TLS handshake, and then to send request headers.
/// Both bound what a slow or idle client (slowloris) can hold open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection must start its first request this soon after the handshake.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in flight and no traffic either way is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A request body may pause at most this long between chunks, and must average at least
/// [`BODY_MIN_RATE`] bytes a second after [`BODY_GRACE`].
const BODY_IDLE: Duration = Duration::from_secs(10);
const BODY_GRACE: Duration = Duration::from_secs(10);
const BODY_MIN_RATE: u64 = 8 * 1024;

/// How long in-flight requests get to finish after shutdown is requested.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, app: Router, shutdown: impl Future<Output = ()>) {
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let client_certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| crate::tls::certificate_name(der))
                .map(ClientCertificate);
            let activity = Arc::new(Activity::new());
            let counted = activity.clone();
            let app = tower::ServiceExt::<axum::extract::Request>::map_future(app, move |response| {
                counted.in_flight.fetch_add(1, Ordering::AcqRel);
                counted.requests.fetch_add(1, Ordering::AcqRel);
                let done = InFlight(counted.clone());
                async move {
                    let response = response.await;
                    drop(done);
                    response
                }
            });
            let service = TowerToHyperService::new(tower::util::MapRequest::new(
                app,
                move |request: axum::extract::Request<hyper::body::Incoming>| {
                    let (mut parts, body) = request.into_parts();
                    parts.extensions.insert(PeerAddr(peer));
                    if let Some(certificate) = &client_certificate {
                        parts.extensions.insert(certificate.clone());
                    }
                    axum::extract::Request::from_parts(parts, axum::body::Body::new(PacedBody::new(body)))
                },
            ));
            let io = TrackedIo { inner: tls, activity: activity.clone() };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            let connection = watcher.watch(connection.into_owned());
            tokio::pin!(connection);
            loop {
                tokio::select! {
                    result = &mut connection => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        }
                        break;
                    }
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if let Some(reason) = activity.expired() {
                            tracing::debug!(%peer, reason, "closing an idle connection");
                            break;
                        }
                    }
                }
            }
        });
    }

    drop(listener);
    tracing::info!(connections = graceful.count(), "shutting down: no new connections; draining in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// What a connection has done, for closing idle ones.
struct Activity {
    opened: Instant,
    /// Microseconds after `opened` of the last byte read or written.
    last_io_us: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_io_us: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_io_us.store(now, Ordering::Release);
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            return (self.opened.elapsed() > FIRST_REQUEST_TIMEOUT).then_some("no request after the handshake");
        }
        let last = Duration::from_micros(self.last_io_us.load(Ordering::Acquire));
        (self.opened.elapsed().saturating_sub(last) > IDLE_TIMEOUT).then_some("idle")
    }
}

/// Counts a request as in flight until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// A connection's stream, noting when bytes pass either way.
struct TrackedIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for TrackedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for TrackedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body that must keep arriving: while the server waits for it, a pause longer than
/// [`BODY_IDLE`], or an average below [`BODY_MIN_RATE`] after [`BODY_GRACE`], ends it with
/// [`SlowClient`] (answered 408). Time the server itself takes before reading does not count.
pub struct PacedBody {
    inner: hyper::body::Incoming,
    started: Instant,
    last_data: Instant,
    received: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl PacedBody {
    fn new(inner: hyper::body::Incoming) -> Self {
        let now = Instant::now();
        PacedBody { inner, started: now, last_data: now, received: 0, timer: Box::pin(tokio::time::sleep(BODY_IDLE)) }
    }

    /// When waiting longer for the client would be too long.
    fn deadline(&self) -> Instant {
        let by_rate = self.started + BODY_GRACE + Duration::from_millis(self.received * 1000 / BODY_MIN_RATE);
        (self.last_data + BODY_IDLE).min(by_rate.max(self.last_data + Duration::from_secs(1)))
    }
}

/// A client that sends its request body too slowly.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly")]
pub struct SlowClient;

impl hyper::body::Body for PacedBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.received += data.len() as u64;
                }
                self.last_data = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = self.deadline();
                if Instant::now() >= deadline {
                    return Poll::Ready(Some(Err(SlowClient.into())));
                }
                self.timer.as_mut().reset(tokio::time::Instant::from_std(deadline));
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(SlowClient.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a body error (anywhere in its chain of causes) is a [`SlowClient`].
pub fn is_slow_client(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<SlowClient>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The client's address, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The name in the client certificate the TLS layer verified (mutual TLS), if any.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub String);

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
