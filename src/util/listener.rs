//! The HTTP listener of `zlh serve` and `zlh agent`: hyper's HTTP/1 server with the
//! deadlines and caps `axum::serve` does not have. A client must send a request's
//! headers within the header timeout; a connection with nothing in flight is closed
//! after the idle timeout; at most `max_connections` are served at once (more wait in
//! the kernel's backlog); a handler gets the request timeout to start its answer
//! (streams — SSE bodies, WebSockets, artifact downloads — are not cut by it: they
//! answer at once and are bounded by their own caps).

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
use tokio::net::TcpListener;
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
/// every connection finish its requests, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let closing = CancellationToken::new();
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
        tokio::spawn(async move {
            connection(stream, peer, app, limits, closing).await;
            drop(permit);
        });
    }
    closing.cancel();
    // Every connection holds a permit until it is done: all of them back means all done.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    slots
        .acquire_many(all)
        .await
        .map(drop)
        .map_err(|e| std::io::Error::other(format!("waiting for connections to close: {e}")))
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

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    closing: CancellationToken,
) {
    let activity = Arc::new(Activity::default());
    if let Ok(mut since) = activity.idle_since.lock() {
        *since = Some(Instant::now());
    }
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let in_flight = tracked.begin();
        req.extensions_mut().insert(ConnectInfo(peer));
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
    if req.uri().path().starts_with("/artifacts/") {
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
