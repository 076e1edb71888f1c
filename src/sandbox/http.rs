//! The sandbox's HTTP/1.1 front: accept loops over plain TCP or TLS with one pingora
//! `ServerSession` per request, the `down` fault (listening socket closed, bound again when
//! cleared, idle keep-alive connections dropped), the `blackhole` hang, and the small
//! request/response types and path matcher the simulators share.

use super::faults::Faults;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Largest request body a simulator reads.
const MAX_BODY: usize = 1 << 20;
/// How long a blackholed connection is held open.
const BLACKHOLE_FOR: Duration = Duration::from_secs(600);
/// Idle keep-alive timeout, seconds.
const KEEPALIVE_SECS: u64 = 60;

/// One request as the simulators see it.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: http::Method,
    /// The URI path, also for absolute-form targets (`POST https://host/path`).
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Request {
    /// A header value (names are case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A complete response. Header names go on the wire exactly as given here.
#[derive(Clone, Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Response {
    pub(crate) fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Bytes::new() }
    }

    pub(crate) fn json(status: u16, v: &Value) -> Self {
        Response::new(status).header("Content-Type", "application/json").body(v.to_string())
    }

    pub(crate) fn html(status: u16, page: String) -> Self {
        Response::new(status).header("Content-Type", "text/html; charset=utf-8").body(page)
    }

    pub(crate) fn redirect(location: &str) -> Self {
        Response::new(303).header("Location", location)
    }

    /// Sets a header, replacing any with the same name (case-insensitive).
    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub(crate) fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub(crate) fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
    }
}

/// What a handler answers.
pub(crate) enum Reply {
    Respond(Response),
    /// Keep the connection open and never answer.
    Blackhole,
}

/// Serves requests on a listener.
#[async_trait::async_trait]
pub(crate) trait Handler: Send + Sync + 'static {
    async fn handle(&self, req: Request) -> Reply;
}

/// Matches `path` against a pattern like `/v1/payment_intents/:id/cancel`; returns the
/// percent-decoded `:` segments.
pub(crate) fn match_path(pattern: &str, path: &str) -> Option<Vec<String>> {
    let (mut p, mut s) = (pattern.split('/'), path.split('/'));
    let mut caps = Vec::new();
    loop {
        match (p.next(), s.next()) {
            (None, None) => return Some(caps),
            (Some(pp), Some(ss)) if pp.starts_with(':') => {
                if ss.is_empty() {
                    return None;
                }
                caps.push(percent_encoding::percent_decode_str(ss).decode_utf8_lossy().into_owned());
            }
            (Some(pp), Some(ss)) if pp == ss => {}
            _ => return None,
        }
    }
}

/// Resolves when `*shutdown` is true or its sender is gone.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Resolves when the instance's faults say `down == want`; never for the control listener.
async fn until_down(faults: &mut Option<watch::Receiver<Faults>>, want: bool) {
    match faults {
        Some(rx) => {
            if rx.wait_for(|f| f.down == want).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// One listening endpoint of the sandbox.
pub(crate) struct Endpoint {
    pub listener: TcpListener,
    pub tls: Option<Arc<Acceptor>>,
    pub handler: Arc<dyn Handler>,
    /// The instance's faults (for `down`); `None` for the control API.
    pub faults: Option<watch::Receiver<Faults>>,
    /// Count of this instance's listeners that are bound, updated here.
    pub up: Option<Arc<watch::Sender<usize>>>,
}

/// Accepts connections until shutdown, closing and re-binding the socket as `down` changes.
pub(crate) async fn serve(ep: Endpoint, mut shutdown: watch::Receiver<bool>) {
    let Endpoint { listener, tls, handler, mut faults, up } = ep;
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "sandbox listener has no local address");
            return;
        }
    };
    let mut listener = Some(listener);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => match rebind(addr, &mut faults, &mut shutdown).await {
                Some(l) => l,
                None => return,
            },
        };
        if let Some(up) = &up {
            up.send_modify(|n| *n += 1);
        }
        let (conn_faults, conn_shutdown) = (faults.clone(), shutdown.clone());
        let stop = tokio::select! {
            _ = accept_loop(&l, addr, &tls, &handler, &conn_faults, &conn_shutdown) => false,
            _ = until_down(&mut faults, true) => false,
            _ = stopped(&mut shutdown) => true,
        };
        drop(l);
        if let Some(up) = &up {
            up.send_modify(|n| *n = n.saturating_sub(1));
        }
        if stop {
            return;
        }
        tracing::info!(%addr, "sandbox listener closed (fault: down)");
    }
}

/// Waits until `down` clears, then binds `addr` again (retrying while the port is taken).
async fn rebind(
    addr: SocketAddr,
    faults: &mut Option<watch::Receiver<Faults>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<TcpListener> {
    tokio::select! {
        _ = until_down(faults, false) => {}
        _ = stopped(shutdown) => return None,
    }
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(%addr, "sandbox listener bound again");
                return Some(l);
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "sandbox listener cannot bind again; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stopped(shutdown) => return None,
                }
            }
        }
    }
}

async fn accept_loop(
    l: &TcpListener,
    addr: SocketAddr,
    tls: &Option<Arc<Acceptor>>,
    handler: &Arc<dyn Handler>,
    faults: &Option<watch::Receiver<Faults>>,
    shutdown: &watch::Receiver<bool>,
) {
    loop {
        match l.accept().await {
            Ok((tcp, _peer)) => {
                tokio::spawn(connection(tcp, tls.clone(), handler.clone(), faults.clone(), shutdown.clone()));
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "sandbox accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one connection: keep-alive requests in sequence.
async fn connection(
    tcp: TcpStream,
    tls: Option<Arc<Acceptor>>,
    handler: Arc<dyn Handler>,
    mut faults: Option<watch::Receiver<Faults>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let l4: L4Stream = tcp.into();
    let mut stream: Stream = match tls {
        Some(acceptor) => {
            let hs = tokio::select! {
                r = acceptor.tls_handshake(l4) => r,
                _ = stopped(&mut shutdown) => return,
            };
            match hs {
                Ok(s) => Box::new(s),
                Err(e) => {
                    tracing::debug!(error = %e, "sandbox TLS handshake failed");
                    return;
                }
            }
        }
        None => Box::new(l4),
    };
    loop {
        let mut session = ServerSession::new_http1(stream);
        // Idle (or first) wait for a request: a `down` fault or shutdown drops the connection.
        // Checked first: a request that arrives on a kept-alive connection after `down` was
        // set must find it gone, even when both are ready at once.
        let read = tokio::select! {
            biased;
            _ = until_down(&mut faults, true) => return,
            _ = stopped(&mut shutdown) => return,
            r = session.read_request() => r,
        };
        if !matches!(read, Ok(true)) {
            return;
        }
        let req = match read_request(&mut session).await {
            Ok(r) => r,
            Err(resp) => {
                session.set_keepalive(None);
                let _ = write(&mut session, resp).await;
                return;
            }
        };
        session.set_keepalive(Some(KEEPALIVE_SECS));
        let reply = tokio::select! {
            r = handler.handle(req) => r,
            _ = stopped(&mut shutdown) => return,
        };
        match reply {
            Reply::Respond(resp) => {
                if write(&mut session, resp).await.is_err() {
                    return;
                }
            }
            Reply::Blackhole => {
                tokio::select! {
                    _ = tokio::time::sleep(BLACKHOLE_FOR) => {}
                    _ = stopped(&mut shutdown) => {}
                }
                return;
            }
        }
        match session.finish().await {
            Ok(Some(reusable)) => stream = reusable.into_parts().0,
            _ => return,
        }
    }
}

async fn read_request(session: &mut ServerSession) -> Result<Request, Response> {
    let h = session.req_header();
    let method = h.method.clone();
    let path = h.uri.path().to_string();
    let query = h.uri.query().unwrap_or("").to_string();
    let headers = h.headers.clone();
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(Response::new(413).body("request body too large"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(Response::new(400).body(format!("cannot read the request body: {e}"))),
        }
    }
    Ok(Request { method, path, query, headers, body: body.freeze() })
}

async fn write(session: &mut ServerSession, resp: Response) -> pingora::Result<()> {
    let mut h = ResponseHeader::build(resp.status, Some(resp.headers.len() + 1))?;
    for (k, v) in resp.headers {
        // A `String` name keeps its case on the wire (Antom clients need lower case).
        h.insert_header(k, v)?;
    }
    h.insert_header("Content-Length", resp.body.len().to_string())?;
    session.write_response_header(Box::new(h)).await?;
    session.write_response_body(resp.body, true).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_patterns() {
        assert_eq!(match_path("/v1/payment_intents/:id", "/v1/payment_intents/pi_1"), Some(vec!["pi_1".into()]));
        assert_eq!(match_path("/v1/payment_intents/:id", "/v1/payment_intents/"), None);
        assert_eq!(match_path("/v1/payment_intents/:id", "/v1/payment_intents/pi_1/cancel"), None);
        assert_eq!(
            match_path("/v1/payment_intents/:id/:op", "/v1/payment_intents/pi%5F1/cancel"),
            Some(vec!["pi_1".into(), "cancel".into()])
        );
        assert_eq!(match_path("/v1/refunds", "/v1/refunds"), Some(vec![]));
        assert_eq!(match_path("/v1/refunds", "/v1/refund"), None);
    }

    #[test]
    fn response_headers_replace_case_insensitively() {
        let r = Response::new(200).header("Content-Type", "a").header("content-type", "b");
        assert_eq!(r.headers, vec![("content-type".to_string(), "b".to_string())]);
        assert!(r.has_header("CONTENT-TYPE"));
    }
}
