//! The HTTP listener of `zlh serve` and `zlh agent`: hyper's HTTP/1 server with the
//! deadlines and caps `axum::serve` does not have. A client must send a request's
//! headers within the header timeout; a connection with nothing in flight is closed
//! after the idle timeout; at most `max_connections` are open at once, WebSockets
//! included (more wait in the kernel's backlog); a handler gets the request timeout to
//! start its answer
//! (streams — SSE bodies, WebSockets, artifact downloads — are not cut by it: they
//! answer at once and are bounded by their own caps). With TLS on, the handshake gets the
//! header timeout too and counts against the same connection cap.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Deadlines and caps of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client has to send a request's headers (hyper also starts it while a
    /// kept-alive connection waits for its next request).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Time a handler has to start its answer (see [`request_timeout`]).
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, lets
/// every connection finish its requests, and returns. With `tls`, every connection is
/// HTTPS (no plain HTTP on the same port).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<crate::util::tls::Tls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let closing = CancellationToken::new();
    // Every connection task holds a sender: when all are gone, all have finished.
    let (running, mut finished) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: say so, give it a moment.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (app, closing) = (app.clone(), closing.clone());
        // The permit goes with the socket: held until it is closed, WebSockets included.
        let io = Lingering {
            stream: Some(stream),
            permit: Some(permit),
        };
        let running = running.clone();
        let tls = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            match tls {
                None => connection(io, peer, app, limits, closing, false).await,
                Some(None) => tracing::error!(%peer, "TLS: no certificate to serve"),
                Some(Some(acceptor)) => {
                    // A client that never finishes its handshake holds a slot no longer
                    // than one that never sends its headers.
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => {
                            connection(stream, peer, app, limits, closing, true).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(running);
        });
    }
    closing.cancel();
    // Like axum::serve: requests in flight finish; upgraded connections (WebSockets)
    // are their handlers' to end, and a closing socket's lingering is not waited for.
    drop(running);
    finished.recv().await;
    Ok(())
}

/// What is in flight on one connection, and since when it has been idle.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Option<Instant>>,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.idle_since.lock().ok()?.map(|t| t.elapsed())
    }
}

/// A request in flight until its response body is done (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && let Ok(mut since) = self.0.idle_since.lock()
        {
            *since = Some(Instant::now());
        }
    }
}

/// A response body that keeps its request in flight while it streams.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket. When hyper is done with it, it is closed gently: the client
/// may still be sending a body that was refused (413) or not read, and closing a socket
/// with unread data resets the connection, losing the answer on its way. So the write
/// side is shut first and the rest read and dropped, briefly, before the close — the
/// "lingering close" of other servers.
struct Lingering {
    stream: Option<TcpStream>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// At most this long, and this much, is read from a closing connection.
const LINGER_FOR: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;
/// A closing connection that sends nothing for this long is closed at once.
const LINGER_QUIET: Duration = Duration::from_millis(500);

impl Lingering {
    fn stream(&mut self) -> std::io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the connection is closed"))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let (Some(stream), permit) = (self.stream.take(), self.permit.take()) else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                linger(stream).await;
                drop(permit);
            });
        }
    }
}

async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.shutdown().await.is_err() {
        return;
    }
    let until = Instant::now() + LINGER_FOR;
    let mut buf = vec![0u8; 16 * 1024];
    let mut read = 0;
    while read < LINGER_BYTES {
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            return;
        };
        match tokio::time::timeout(left.min(LINGER_QUIET), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => read += n,
            // Closed by the client, an error, or quiet: done.
            _ => return,
        }
    }
}

impl tokio::io::AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write(cx, data),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    closing: CancellationToken,
    https: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    if let Ok(mut since) = activity.idle_since.lock() {
        *since = Some(Instant::now());
    }
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let in_flight = tracked.begin();
        req.extensions_mut().insert(ConnectInfo(peer));
        if https {
            // Said the way a proxy in front would say it, so cookies get `Secure` by one
            // rule; a client's own value is replaced, as it must not decide either way.
            req.headers_mut().insert(
                "x-forwarded-proto",
                axum::http::HeaderValue::from_static("https"),
            );
        }
        let mut app = app.clone();
        async move {
            let resp = tower_service::Service::call(&mut app, req).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut tick = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(50)));
    let mut ending = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = closing.cancelled(), if !ending => {
                conn.as_mut().graceful_shutdown();
                ending = true;
            }
            _ = tick.tick(), if !ending => {
                if activity.idle_for().is_some_and(|d| d >= limits.idle_timeout) {
                    conn.as_mut().graceful_shutdown();
                    ending = true;
                }
            }
        }
    }
}

/// Middleware: a handler that has not started its answer within `limit` is answered
/// 503 (its work is dropped). Artifact downloads may first fill from an upstream and
/// are exempt; SSE and WebSocket handlers answer at once and stream afterwards.
pub async fn request_timeout(limit: Duration, req: Request, next: Next) -> Response {
    // File uploads and extractions answer once the body is stored or the archive
    // unpacked (size-capped by their own settings, not by time).
    let path = req.uri().path();
    if path.starts_with("/artifacts/")
        || path.ends_with("/files/upload")
        || path.ends_with("/files/content") && req.method() == axum::http::Method::PUT
        || path.ends_with("/files/extract")
    {
        return next.run(req).await;
    }
    let api = req.uri().path().starts_with("/api/");
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            let message = format!("the request took longer than {} s", limit.as_secs());
            tracing::warn!(
                limit_secs = limit.as_secs(),
                "request timed out before its answer"
            );
            if api {
                // The API's error shape (`crate::error` is not imported here: the agent
                // uses this module too).
                let body = serde_json::json!({
                    "error": {"code": "unavailable", "message": message, "field": null}
                });
                (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    message,
                )
                    .into_response()
            }
        }
    }
}
