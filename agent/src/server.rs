//! The HTTP endpoint, over TLS and behind basic authentication when the web
//! config file asks for them: `/metrics`, `/healthz`, `/readyz`, and `/debug/<name>`
//! for the JSON documents collectors publish (`bursts`, `netslots`, `recordings`).
//!
//! Reads only the [`Store`]; needs a listening socket. Bounded against slow and
//! greedy clients: a header read timeout (slowloris), a maximum request head,
//! and a maximum of concurrent connections beyond which clients get a 503.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hostwatch_exporters::Format;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::config::HttpConfig;
use crate::scheduler::Shared;
use crate::web_config::{Access, Security};

/// How long in-flight requests may take to finish once the agent stops.
const DRAIN: Duration = Duration::from_secs(1);

const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 20\r\nconnection: close\r\n\r\ntoo many connections";

/// Serves until `shutdown` completes, then drains in-flight requests for at most [`DRAIN`].
pub async fn serve(
    listener: TcpListener,
    http: &HttpConfig,
    security: Arc<Security>,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(
        usize::try_from(http.max_connections.get()).unwrap_or(usize::MAX),
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_timeout.get())
        .max_buf_size(usize::try_from(http.max_header_bytes.get()).unwrap_or(usize::MAX));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning on accept.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let tls = security.tls().cloned();
        let (shared, security) = (Arc::clone(&shared), Arc::clone(&security));
        let service = hyper::service::service_fn(move |request| {
            let (shared, security) = (Arc::clone(&shared), Arc::clone(&security));
            async move { Ok::<_, Infallible>(route(&request, &shared, &security)) }
        });
        match tls {
            None => {
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        debug!(%peer, %error, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
            Some(acceptor) => {
                let (builder, watcher) = (builder.clone(), graceful.watcher());
                let handshake_timeout = http.header_timeout.get();
                tokio::spawn(async move {
                    // A client speaking plain HTTP to the TLS port, or one
                    // that never finishes the handshake, is dropped here.
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => return debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => return debug!(%peer, "TLS handshake timed out"),
                    };
                    if let Err(error) = watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                    {
                        debug!(%peer, %error, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
        }
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        debug!("connections still open after the drain period; closing them");
    }
}

/// Answers 503 to a connection beyond the limit. The request head is read
/// (bounded) first: closing with unread data would reset the connection and
/// the client would see an error instead of the 503. A client that sends
/// nothing in time still gets the 503: the wait for its head and the answer
/// have a bound each.
async fn refuse(mut stream: tokio::net::TcpStream) {
    const BOUND: Duration = Duration::from_millis(200);
    let mut head = [0u8; 1024];
    let _ = tokio::time::timeout(BOUND, stream.read(&mut head)).await;
    let _ = tokio::time::timeout(BOUND, async {
        let _ = stream.write_all(BUSY).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

fn route(request: &Request<Incoming>, shared: &Shared, security: &Security) -> Response<Full<Bytes>> {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if security.check(authorization) == Access::Denied {
        let mut response = plain(StatusCode::UNAUTHORIZED, "unauthorized\n");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"hostwatch\""),
        );
        return response;
    }
    let path = request.uri().path();
    let debug = path.strip_prefix("/debug/").and_then(|name| shared.facts.debug(name));
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") && debug.is_none() {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" if shared.is_ready() => plain(StatusCode::OK, "ready\n"),
        "/readyz" => plain(StatusCode::SERVICE_UNAVAILABLE, "first collection not done\n"),
        "/metrics" => metrics(request, shared),
        _ => json(debug.unwrap_or_default()),
    }
}

fn metrics(request: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let headers = request.headers();
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(hostwatch_exporters::accepts_gzip);
    match shared.store.exposition(format, gzip) {
        Ok(body) => {
            let mut response = Response::new(Full::new(body));
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
            if gzip {
                headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        Err(error) => {
            warn!(%error, "encoding the exposition failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
        }
    }
}

/// A document a collector published for `/debug/<name>`.
fn json(document: Arc<str>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(document.as_bytes().to_vec())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
