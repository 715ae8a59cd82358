//! The egress proxy: every request Chromium makes goes through one, vetted by the SSRF policy.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use url::Url;

use crate::ssrf::VisitPolicy;

/// How long the proxy and the HTTP fallback wait for a TCP connection to a vetted address.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many proxy refusals are remembered to explain a failed navigation.
const REFUSAL_LOG_LEN: usize = 64;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The forward proxy Chromium is forced through: every request it makes is vetted by the
/// [`VisitPolicy`] here and connected to a vetted address by this process, or answered 403.
pub(crate) struct EgressProxy {
    addr: SocketAddr,
    refusals: Arc<Mutex<VecDeque<(Instant, String)>>>,
    accept_loop: JoinHandle<()>,
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

#[derive(Clone)]
struct ProxyState {
    /// `None` refuses everything: the browser-wide proxy, which only Chromium's own background traffic
    /// reaches (task pages go through their context's proxy).
    policy: Option<Arc<VisitPolicy>>,
    refusals: Arc<Mutex<VecDeque<(Instant, String)>>>,
}

impl EgressProxy {
    /// The address Chromium is pointed at.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Binds 127.0.0.1:0 and serves until dropped.
    pub(crate) async fn start(policy: Option<Arc<VisitPolicy>>) -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let refusals = Arc::new(Mutex::new(VecDeque::with_capacity(REFUSAL_LOG_LEN)));
        let state = ProxyState {
            policy,
            refusals: refusals.clone(),
        };
        let accept_loop = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        warn!(error = %e, "egress proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .preserve_header_case(true)
                        .title_case_headers(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await
                    {
                        debug!(error = %e, "egress proxy connection ended with an error");
                    }
                });
            }
        });
        Ok(Self {
            addr,
            refusals,
            accept_loop,
        })
    }

    /// The refusals logged at or after `since`, oldest first and deduplicated, joined into one message;
    /// `None` when there were none. Chromium's own background requests (a connectivity check after a
    /// failed load, say) can land in the same window, which is why all of them are named.
    pub(super) fn refusals_since(&self, since: Instant) -> Option<String> {
        let log = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let mut messages: Vec<&str> = Vec::new();
        for (_, message) in log.iter().filter(|(at, _)| *at >= since) {
            if !messages.contains(&message.as_str()) {
                messages.push(message);
            }
        }
        (!messages.is_empty()).then(|| messages.join("; "))
    }
}

impl ProxyState {
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let target = if req.method() == Method::CONNECT {
            req.uri()
                .authority()
                .map(|authority| format!("https://{authority}/"))
        } else {
            Some(req.uri().to_string())
        };
        let connect = req.method() == Method::CONNECT;
        let Some(url) = target
            .as_deref()
            .and_then(|t| Url::parse(t).ok())
            .filter(|url| connect || url.scheme() == "http")
        else {
            return text_response(
                StatusCode::BAD_REQUEST,
                "egress proxy: not a proxy request".into(),
            );
        };
        let checked = match &self.policy {
            Some(policy) => policy
                .check(&url)
                .await
                .map_err(|refused| refused.to_string()),
            None => Err(format!(
                "VISIT refused: {url} was requested outside a task's browser context"
            )),
        };
        let addrs = match checked {
            Ok(addrs) => addrs,
            Err(message) => {
                info!(
                    method = %req.method(),
                    url = %url,
                    reason = %message,
                    "egress proxy refused a request"
                );
                {
                    let mut log = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == REFUSAL_LOG_LEN {
                        log.pop_front();
                    }
                    log.push_back((Instant::now(), message.clone()));
                }
                return text_response(StatusCode::FORBIDDEN, message);
            }
        };
        let upstream = match connect_any(&addrs).await {
            Ok(stream) => stream,
            Err(e) => {
                debug!(url = %url, error = %e, "egress proxy could not connect");
                return text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("egress proxy: could not connect to {url}: {e}"),
                );
            }
        };
        if req.method() == Method::CONNECT {
            tunnel(req, upstream);
            return Response::new(Empty::new().map_err(|never| match never {}).boxed());
        }
        match forward(req, upstream).await {
            Ok(response) => response,
            Err(e) => text_response(
                StatusCode::BAD_GATEWAY,
                format!("egress proxy: upstream error for {url}: {e}"),
            ),
        }
    }
}

/// Splices the client's upgraded CONNECT stream to the vetted upstream connection.
fn tunnel(req: Request<Incoming>, mut upstream: TcpStream) {
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    debug!(error = %e, "tunnel closed with an error");
                }
            }
            Err(e) => debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
}

/// Sends a plain-HTTP proxy request (absolute-form URI) to the vetted upstream connection.
async fn forward(
    req: Request<Incoming>,
    upstream: TcpStream,
) -> Result<Response<ProxyBody>, hyper::Error> {
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .title_case_headers(true)
        .handshake(TokioIo::new(upstream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    let (mut parts, body) = req.into_parts();
    let origin_form = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .unwrap_or_else(|_| hyper::Uri::from_static("/"));
    if !parts.headers.contains_key(hyper::header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = authority.as_str().parse()
    {
        parts.headers.insert(hyper::header::HOST, value);
    }
    parts.uri = origin_form;
    parts.headers.remove("proxy-connection");
    parts.headers.remove(hyper::header::PROXY_AUTHORIZATION);
    let response = sender
        .send_request(Request::from_parts(parts, body))
        .await?;
    Ok(response.map(BodyExt::boxed))
}

fn text_response(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Connects to the first vetted address that answers.
async fn connect_any(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}
