//! Sends connector requests over pingora's HTTP/1.1 client, on connections from paymux's own
//! idle pool, and classifies transport failures.
//!
//! The classification is what failover safety rests on: `NotSent` means no request byte can
//! have reached the provider (connect refused, connect timeout, DNS), so trying another channel
//! is safe; `Timeout` and `Broken` happen after the request may have been delivered and force a
//! status query. Host names are resolved by [`DnsCache`], filled when the policy compiles and
//! refreshed in the background, so no lookup ever runs on the request path.

use super::{WireRequest, WireResponse};
use bytes::BytesMut;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession as H1Session};
use pingora::protocols::Stream;
use pingora::upstreams::peer::{HttpPeer, Peer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a send produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Nothing reached the provider.
    NotSent(String),
    /// The request may have been delivered; no (complete) answer in time.
    Timeout,
    /// The connection broke after the request may have been delivered.
    Broken(String),
}

impl SendError {
    /// Stable code for attempts, metrics and audit.
    pub fn code(&self) -> &'static str {
        match self {
            SendError::NotSent(_) => "connect_failed",
            SendError::Timeout => "timeout",
            SendError::Broken(_) => "connection_broken",
        }
    }
}

/// Host → addresses, read by the HTTP client instead of the system resolver.
#[derive(Default)]
pub struct DnsCache {
    map: RwLock<HashMap<String, Vec<SocketAddr>>>,
}

impl DnsCache {
    /// The process-wide cache.
    pub fn global() -> Arc<DnsCache> {
        static C: OnceLock<Arc<DnsCache>> = OnceLock::new();
        C.get_or_init(|| Arc::new(DnsCache::default())).clone()
    }

    /// Resolves `host` now (blocking; call off the request path) and stores the result.
    pub fn prime(&self, host: &str) -> Result<(), String> {
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            return Ok(());
        }
        let addrs: Vec<SocketAddr> = (host, 0).to_socket_addrs().map_err(|e| e.to_string())?.collect();
        if addrs.is_empty() {
            return Err("no addresses".into());
        }
        if let Ok(mut m) = self.map.write() {
            m.insert(host.to_string(), addrs);
        }
        Ok(())
    }

    /// Re-resolves every known host; failures keep the previous addresses.
    pub fn refresh_all(&self) {
        let hosts: Vec<String> = self.map.read().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        for h in hosts {
            if let Err(e) = self.prime(&h) {
                tracing::warn!(host = %h, error = %e, "DNS refresh failed; keeping previous addresses");
            }
        }
    }

    fn lookup(&self, host: &str) -> Option<Vec<SocketAddr>> {
        self.map.read().ok()?.get(host).cloned()
    }
}

/// The process-wide client: pingora's connector (TCP and TLS connects, with the platform's CA
/// certificates, checked when first needed) and the idle connections, shared by every channel
/// and kept across reloads.
///
/// The idle pool is paymux's own rather than pingora's: pingora's keeps a task per idle
/// connection that holds it locked, so every reuse is a hand-off between two tasks (often a
/// wake-up of another worker thread) and every release a task spawned. Here an idle
/// connection is a stream in a list; whether the provider closed it (or sent something
/// unasked) is checked with one non-blocking read when it is taken, as pingora does when it
/// releases one, and by housekeeping every pass. (That read sees what tokio's I/O driver has
/// seen: a close arriving in the same instant can still pass, and the request then ends as
/// a broken, ambiguous exchange, safe; pingora's pool had the same window.)
struct Client {
    connector: TransportConnector,
    idle: Mutex<HashMap<u64, Vec<Idle>>>,
}

struct Idle {
    stream: Stream,
    /// Not used from then on: our idle timeout, or sooner when the provider said it closes
    /// idle connections sooner.
    until: Instant,
}

impl Client {
    fn global() -> Result<&'static Client, String> {
        static C: OnceLock<Result<Client, String>> = OnceLock::new();
        C.get_or_init(|| {
            // pingora's TLS set-up panics on a CA store it cannot read; read it first to say why.
            let mut probe = pingora::tls::RootCertStore::empty();
            pingora::tls::load_platform_certs_incl_env_into_store(&mut probe)
                .map_err(|e| format!("cannot load the system's CA certificates: {e}"))?;
            Ok(Client {
                // pingora's own pool stays unused (size 1): connections are kept in `idle`.
                connector: TransportConnector::new(Some(ConnectorOptions::new(1))),
                idle: Mutex::new(HashMap::new()),
            })
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    /// The lists. A panic elsewhere while one was held cannot have left a list half-changed
    /// (a push or a pop), so a poisoned lock is used as it is rather than ending pooling.
    fn lists(&self) -> MutexGuard<'_, HashMap<u64, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection to `peer` that is still open and quiet.
    fn take(&self, peer: &HttpPeer) -> Option<Stream> {
        let key = peer.reuse_hash();
        loop {
            let Idle { mut stream, until } = self.lists().get_mut(&key)?.pop()?;
            if Instant::now() < until && quiet(&mut stream) {
                return Some(stream);
            }
            // Closed by the provider, sent something unasked, or idle too long: dropped
            // (closed), the lock no longer held.
        }
    }

    /// Keeps a connection whose exchange is complete for the next request to `peer`, for
    /// `keep` at most.
    fn put(&self, peer: &HttpPeer, stream: Stream, keep: Duration) {
        let evicted = {
            let mut lists = self.lists();
            let list = lists.entry(peer.reuse_hash()).or_default();
            list.push(Idle { stream, until: Instant::now() + keep });
            // The oldest goes (the likeliest to be closed by the provider).
            (list.len() > POOL_PER_PEER).then(|| list.remove(0))
        };
        drop(evicted);
    }

    /// Closes idle connections whose time is up at `now`, or that the provider closed or
    /// wrote to meanwhile; only those to the peer `only` when given (tests).
    fn purge(&self, now: Instant, only: Option<u64>) {
        let mut gone = Vec::new();
        {
            let mut lists = self.lists();
            for (_, list) in lists.iter_mut().filter(|(k, _)| only.is_none_or(|o| o == **k)) {
                let (kept, expired): (Vec<Idle>, Vec<Idle>) =
                    std::mem::take(list).into_iter().partition(|c| now < c.until);
                *list = kept;
                gone.extend(expired);
                // One poll each, no system call unless the socket turned readable.
                gone.extend(list.extract_if(.., |c| !quiet(&mut c.stream)));
            }
            lists.retain(|_, l| !l.is_empty());
        }
        // Closed with the lock released: each close is a few system calls.
        drop(gone);
    }
}

/// True when an idle connection has nothing to read: not closed, not broken, and no bytes the
/// provider sent unasked (which would be taken for the next answer).
fn quiet(stream: &mut Stream) -> bool {
    let mut buf = [0u8; 1];
    // Polled once. `unconstrained`: tokio's co-operative budget could make a ready read look
    // pending.
    let read = std::pin::pin!(tokio::task::unconstrained(stream.read(&mut buf)));
    read.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())).is_pending()
}

/// Closes the idle provider connections whose time is up or that the provider closed
/// (housekeeping).
pub fn purge_idle() {
    if let Ok(c) = Client::global() {
        c.purge(Instant::now(), None);
    }
}

/// How long an idle connection may be reused: our idle timeout, or less when the provider's
/// `Keep-Alive: timeout=N` says it closes idle connections after N seconds. Then until a
/// tenth of N (at least a second) before that: the provider's clock started when it sent the
/// answer, and the next request still has to reach it. Not kept at all for N ≤ 1.
fn keep_for(headers: &http::HeaderMap) -> Duration {
    let said = headers.get_all("keep-alive").iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(',').find_map(|p| {
            let (k, n) = p.split_once('=')?;
            let n = n.trim().trim_matches('"');
            k.trim().eq_ignore_ascii_case("timeout").then(|| n.parse::<u64>().ok()).flatten()
        })
    });
    match said {
        Some(secs) => {
            let said = Duration::from_secs(secs);
            said.saturating_sub((said / 10).max(Duration::from_secs(1))).min(IDLE)
        }
        None => IDLE,
    }
}

/// Idle connections kept per provider address.
const POOL_PER_PEER: usize = 256;
/// How long an idle pooled connection is kept.
const IDLE: Duration = Duration::from_secs(50);
/// Less time than this left after connecting: the request is not sent (see `send`).
const MIN_EXCHANGE: Duration = Duration::from_millis(5);
/// The largest provider answer read; a larger one is treated as a broken exchange.
const MAX_RESPONSE: usize = 4 << 20;

/// One channel's HTTP endpoint: where, how long to wait, and the shared pool.
#[derive(Clone)]
pub struct Transport {
    host: String,
    port: u16,
    tls: bool,
    /// `Host` header value: the host, with the port when it is not the scheme's default.
    authority: String,
    /// Path prefix of the base URL, without a trailing slash.
    prefix: String,
    connect_timeout: Duration,
    attempt_timeout: Duration,
}

impl Transport {
    /// Validates the base URL and primes the DNS cache for its host (blocking).
    pub fn new(base_url: &str, connect_timeout: Duration, attempt_timeout: Duration) -> Result<Self, String> {
        let url = reqwest::Url::parse(base_url).map_err(|e| e.to_string())?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("unsupported scheme `{other}` (use http or https)")),
        };
        let host = url.host_str().ok_or("base URL has no host")?.to_string();
        let port = url.port_or_known_default().ok_or("base URL has no port")?;
        DnsCache::global().prime(&host).map_err(|e| format!("cannot resolve `{host}`: {e}"))?;
        Client::global()?;
        let authority = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        Ok(Transport {
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            tls,
            authority,
            prefix: url.path().trim_end_matches('/').to_string(),
            connect_timeout,
            attempt_timeout,
        })
    }

    /// Where it sends (scheme, authority, path prefix): another endpoint is another party.
    pub fn endpoint(&self) -> String {
        format!("{}://{}{}", if self.tls { "https" } else { "http" }, self.authority, self.prefix)
    }

    /// The per-attempt timeout.
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    fn addrs(&self) -> Result<Vec<SocketAddr>, SendError> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let found = DnsCache::global().lookup(&self.host);
        let addrs: Vec<SocketAddr> =
            found.unwrap_or_default().into_iter().map(|a| SocketAddr::new(a.ip(), self.port)).collect();
        if addrs.is_empty() {
            return Err(SendError::NotSent(format!("host {} not in the DNS cache", self.host)));
        }
        Ok(addrs)
    }

    /// A pooled or new connection to the first address that answers within `budget`, which
    /// the addresses share: one that hangs (a dead AAAA record, say) leaves the next its turn.
    async fn connect(&self, client: &Client, budget: Duration) -> Result<(Stream, HttpPeer), SendError> {
        let until = tokio::time::Instant::now() + budget;
        let addrs = self.addrs()?;
        let mut peers: Vec<HttpPeer> = addrs.iter().map(|a| HttpPeer::new(*a, self.tls, self.host.clone())).collect();
        if let Some((i, s)) = peers.iter().enumerate().find_map(|(i, p)| client.take(p).map(|s| (i, s))) {
            return Ok((s, peers.swap_remove(i)));
        }
        let mut last = String::from("connect timed out");
        for (i, (addr, mut peer)) in addrs.iter().zip(peers).enumerate() {
            let share = until.saturating_duration_since(tokio::time::Instant::now()) / (addrs.len() - i) as u32;
            if share.is_zero() {
                break;
            }
            peer.options.connection_timeout = Some(share);
            peer.options.total_connection_timeout = Some(share);
            match tokio::time::timeout(share, client.connector.new_stream(&peer)).await {
                Ok(Ok(s)) => return Ok((s, peer)),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("connect to {addr} timed out"),
            }
        }
        Err(SendError::NotSent(last))
    }

    /// Sends `req`, bounded by the attempt timeout (or `deadline`, if sooner).
    pub async fn send(&self, req: &WireRequest, deadline: Option<Duration>) -> Result<WireResponse, SendError> {
        let timeout = deadline.map_or(self.attempt_timeout, |d| d.min(self.attempt_timeout));
        let started = tokio::time::Instant::now();
        let client = Client::global().map_err(SendError::NotSent)?;
        let wire = self.wire(req).map_err(SendError::NotSent)?;
        let (stream, peer) = self.connect(client, timeout.min(self.connect_timeout)).await?;
        // A connection that took (nearly) the whole budget: sending now could only end in an
        // ambiguous timeout, while nothing has been sent yet.
        let left = timeout.saturating_sub(started.elapsed());
        if left < MIN_EXCHANGE {
            client.put(&peer, stream, IDLE);
            return Err(SendError::NotSent(format!("connected with {left:?} of the attempt left")));
        }
        let (resp, mut session) = match tokio::time::timeout(left, exchange(stream, &peer, &wire)).await {
            Err(_) => return Err(SendError::Timeout),
            Ok(Err(e)) => return Err(SendError::Broken(e)),
            Ok(Ok(r)) => r,
        };
        // Kept when the answer was complete and both sides keep the connection alive (no wait:
        // `reuse` hands the stream back at once); else closed (for TLS, with a close_notify),
        // in a task of its own, bounded, as that is not the caller's wait.
        session.respect_keepalive();
        let keep = keep_for(&resp.headers);
        if session.will_keepalive() && !keep.is_zero() {
            if let Some(stream) = session.reuse().await {
                client.put(&peer, stream, keep);
            }
        } else {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), session.shutdown()).await;
            });
        }
        Ok(resp)
    }

    /// The request as it goes on the wire: request line, headers, body.
    fn wire(&self, req: &WireRequest) -> Result<BytesMut, String> {
        // The answer is read by a session that did not write the request (`exchange`): it
        // takes the request for one with an ordinary answer on a kept-alive connection.
        if req.method == http::Method::HEAD || req.method == http::Method::CONNECT {
            return Err(format!("{} is not sent to providers", req.method));
        }
        const SET_HERE: [&str; 6] = ["connection", "upgrade", "expect", "transfer-encoding", "content-length", "host"];
        if let Some((k, _)) = req.headers.iter().find(|(k, _)| SET_HERE.iter().any(|h| h.eq_ignore_ascii_case(k))) {
            return Err(format!("the transport sets or forbids the `{k}` header"));
        }
        let path = format!("{}{}", self.prefix, req.path);
        let mut h = RequestHeader::build(req.method.clone(), path.as_bytes(), Some(req.headers.len() + 2))
            .map_err(|e| e.to_string())?;
        let e = |e: Box<pingora::Error>| e.to_string();
        h.insert_header(http::header::HOST, &self.authority).map_err(e)?;
        for (k, v) in &req.headers {
            h.append_header(*k, v.as_str()).map_err(e)?;
        }
        if !req.body.is_empty() || req.method == http::Method::POST {
            h.insert_header(http::header::CONTENT_LENGTH, req.body.len()).map_err(e)?;
        }
        let mut wire = http_req_header_to_wire(&h).ok_or("the request line or a header cannot be sent")?;
        wire.extend_from_slice(&req.body);
        Ok(wire)
    }
}

/// Writes the request and reads the whole answer; gives the session back for reuse.
async fn exchange(mut stream: Stream, peer: &HttpPeer, wire: &[u8]) -> Result<(WireResponse, H1Session), String> {
    // Request line, headers and body leave in one write: pingora's session writes the header
    // and the body separately (two segments, and often two wake-ups of the provider).
    stream.write_all(wire).await.map_err(|e| format!("writing the request: {e}"))?;
    stream.flush().await.map_err(|e| format!("writing the request: {e}"))?;
    // A session that did not write the request assumes it was neither HEAD nor an Upgrade,
    // which paymux never sends: it reads the answer as any other.
    let mut s = H1Session::new_with_options(stream, peer);
    let e = |e: Box<pingora::Error>| e.to_string();
    // Informational answers (100, 103) come before the real one.
    let status = loop {
        s.read_response().await.map_err(e)?;
        match s.get_status() {
            Some(st) if st.is_informational() && st.as_u16() != 101 => continue,
            Some(st) => break st.as_u16(),
            None => return Err("no response status".into()),
        }
    };
    let headers = s.resp_header().map(|h| h.headers.clone()).unwrap_or_default();
    let mut buf = BytesMut::new();
    while let Some(chunk) = s.read_body_bytes().await.map_err(e)? {
        if buf.len() + chunk.len() > MAX_RESPONSE {
            return Err(format!("response body over {MAX_RESPONSE} bytes"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((WireResponse { status, headers, body: buf.freeze() }, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What a test provider does after each answer.
    #[derive(Clone, Copy)]
    enum Then {
        /// Keeps the connection open for the next request.
        Wait,
        /// Closes the connection.
        Close,
        /// Sends these bytes unasked a moment later, and keeps the connection open.
        Send(&'static [u8]),
    }

    /// A provider on loopback that answers every request with `answer`, records what it
    /// received, and then does `then`.
    async fn provider(answer: Vec<u8>, then: Then) -> (u16, Arc<Mutex<Vec<String>>>, Arc<Mutex<usize>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (seen, conns) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0)));
        let (seen2, conns2) = (seen.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                *conns2.lock().unwrap() += 1;
                let (answer, seen) = (answer.clone(), seen2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(end) = text.find("\r\n\r\n") else { continue };
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        seen.lock().unwrap().push(text[..end + 4 + len].to_string());
                        buf.drain(..end + 4 + len);
                        if s.write_all(&answer).await.is_err() {
                            return;
                        }
                        match then {
                            Then::Wait => {}
                            Then::Close => return,
                            Then::Send(extra) => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                let _ = s.write_all(extra).await;
                            }
                        }
                    }
                });
            }
        });
        (port, seen, conns)
    }

    fn post(path: &str, body: &str) -> WireRequest {
        WireRequest {
            method: http::Method::POST,
            path: path.into(),
            headers: vec![("idempotency-key", "k1".into())],
            body: Bytes::from(body.to_string()),
        }
    }

    fn transport(port: u16, prefix: &str, attempt_ms: u64) -> Transport {
        let base = format!("http://127.0.0.1:{port}{prefix}");
        Transport::new(&base, Duration::from_millis(500), Duration::from_millis(attempt_ms)).unwrap()
    }

    #[tokio::test]
    async fn sends_the_base_path_host_and_length_and_reuses_the_connection() {
        let (port, seen, conns) =
            provider(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), Then::Wait).await;
        let t = transport(port, "/api/", 2000);
        for _ in 0..3 {
            let r = t.send(&post("/v1/x", "a=1"), None).await.unwrap();
            assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        }
        let first = seen.lock().unwrap()[0].to_ascii_lowercase();
        assert!(first.starts_with("post /api/v1/x http/1.1\r\n"), "{first}");
        for h in
            [format!("host: 127.0.0.1:{port}\r\n"), "content-length: 3\r\n".into(), "idempotency-key: k1\r\n".into()]
        {
            assert!(first.contains(&h), "{h} missing in {first}");
        }
        assert!(first.ends_with("\r\n\r\na=1"), "{first}");
        assert_eq!(*conns.lock().unwrap(), 1, "three sends, one pooled connection");
    }

    #[tokio::test]
    async fn reads_chunked_answers_after_informational_ones() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 402 Payment Required\r\nTransfer-Encoding: chunked\r\nX-Req: r1\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let (port, _, _) = provider(answer.to_vec(), Then::Wait).await;
        let r = transport(port, "", 2000).send(&post("/v1/x", ""), None).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (402, &b"hello world"[..]));
        assert_eq!(r.headers.get("x-req").unwrap(), "r1");
    }

    #[tokio::test]
    async fn a_connection_the_provider_closed_after_answering_is_not_reused() {
        let (port, seen, conns) = provider(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(), Then::Close).await;
        let t = transport(port, "", 2000);
        t.send(&post("/a", "1"), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The closed connection is noticed in the pool; the next send opens a new one
        // rather than failing as a broken (ambiguous) exchange.
        t.send(&post("/b", "2"), None).await.unwrap();
        assert_eq!((seen.lock().unwrap().len(), *conns.lock().unwrap()), (2, 2));
    }

    #[tokio::test]
    async fn an_idle_connection_holding_bytes_the_provider_sent_unasked_is_not_reused() {
        // Read as the answer to the next request, a stray 408 would be taken for the
        // provider's verdict on a request it never saw.
        let stray = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n";
        let (port, seen, conns) =
            provider(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), Then::Send(stray)).await;
        let t = transport(port, "", 2000);
        t.send(&post("/a", "1"), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let r = t.send(&post("/b", "2"), None).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        assert_eq!((seen.lock().unwrap().len(), *conns.lock().unwrap()), (2, 2));
    }

    /// The process-wide pool's key for `port`'s provider.
    fn key(port: u16) -> u64 {
        HttpPeer::new(SocketAddr::from(([127, 0, 0, 1], port)), false, "127.0.0.1".into()).reuse_hash()
    }

    /// Idle connections kept for `port`'s provider.
    fn idle_for(port: u16) -> usize {
        Client::global().unwrap().lists().get(&key(port)).map_or(0, Vec::len)
    }

    /// Purges as housekeeping would at `now`, only `port`'s connections (tests run in
    /// parallel and share the pool).
    fn purge_at(port: u16, now: Instant) {
        Client::global().unwrap().purge(now, Some(key(port)));
    }

    #[tokio::test]
    async fn idle_connections_are_closed_when_their_time_is_up_and_not_reused() {
        let (port, _, conns) = provider(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(), Then::Wait).await;
        let t = transport(port, "", 2000);
        t.send(&post("/a", "1"), None).await.unwrap();
        purge_at(port, Instant::now() + IDLE - Duration::from_secs(1));
        assert_eq!(idle_for(port), 1, "kept within the idle timeout");
        purge_at(port, Instant::now() + IDLE);
        assert_eq!(idle_for(port), 0, "closed after it");
        t.send(&post("/b", "2"), None).await.unwrap();
        assert_eq!(*conns.lock().unwrap(), 2, "the closed connection was not used again");
    }

    #[tokio::test]
    async fn housekeeping_closes_idle_connections_the_provider_closed() {
        let (port, _, _) = provider(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(), Then::Close).await;
        transport(port, "", 2000).send(&post("/a", "1"), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        purge_at(port, Instant::now());
        assert_eq!(idle_for(port), 0, "not left in CLOSE_WAIT until its time is up");
    }

    #[tokio::test]
    async fn the_providers_keep_alive_timeout_shortens_how_long_a_connection_is_kept() {
        let (port, _, _) = provider(
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Then::Wait,
        )
        .await;
        transport(port, "", 2000).send(&post("/a", "1"), None).await.unwrap();
        purge_at(port, Instant::now() + Duration::from_millis(3500));
        assert_eq!(idle_for(port), 1);
        purge_at(port, Instant::now() + Duration::from_millis(4100));
        assert_eq!(idle_for(port), 0, "gone a second before the provider closes it");
        // A provider that closes idle connections within a second: not kept at all.
        let (port, _, conns) =
            provider(b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 0\r\n\r\n".to_vec(), Then::Wait)
                .await;
        let t = transport(port, "", 2000);
        t.send(&post("/a", "1"), None).await.unwrap();
        assert_eq!(idle_for(port), 0);
        t.send(&post("/b", "2"), None).await.unwrap();
        assert_eq!(*conns.lock().unwrap(), 2);
    }

    #[test]
    fn keep_alive_timeouts_are_read_leniently_and_capped() {
        let keep = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("keep-alive", v.parse().unwrap());
            keep_for(&h)
        };
        let secs = Duration::from_secs;
        assert_eq!(keep("timeout=5, max=100"), secs(4));
        assert_eq!(keep("max=100, Timeout = 2"), secs(1));
        assert_eq!(keep("timeout=\"5\""), secs(4));
        assert_eq!(keep("timeout=30"), secs(27), "a tenth off when that is more than a second");
        assert_eq!(keep("timeout=1"), Duration::ZERO);
        assert_eq!(keep("timeout=0"), Duration::ZERO);
        assert_eq!(keep("timeout=3600"), IDLE);
        // Over two header lines.
        let mut h = http::HeaderMap::new();
        h.append("keep-alive", "max=100".parse().unwrap());
        h.append("keep-alive", "timeout=5".parse().unwrap());
        assert_eq!(keep_for(&h), secs(4));
        for unusable in ["max=3", "timeout=soon", "timeout", ""] {
            assert_eq!(keep(unusable), IDLE, "{unusable:?}");
        }
        assert_eq!(keep_for(&http::HeaderMap::new()), IDLE);
    }

    #[tokio::test]
    async fn an_oversized_answer_is_a_broken_exchange() {
        let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_RESPONSE + 1).into_bytes();
        answer.resize(answer.len() + MAX_RESPONSE + 1, b'x');
        let (port, _, _) = provider(answer, Then::Wait).await;
        match transport(port, "", 5000).send(&post("/x", ""), None).await {
            Err(SendError::Broken(e)) => assert!(e.contains("over"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn refused_is_not_sent_silence_is_a_timeout_and_a_cut_answer_is_broken() {
        // Refused (bound, not listening: no other test can take the port meanwhile).
        let bound = tokio::net::TcpSocket::new_v4().unwrap();
        bound.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = bound.local_addr().unwrap().port();
        let r = transport(port, "", 2000).send(&post("/x", ""), None).await;
        assert!(matches!(r, Err(SendError::NotSent(_))), "{r:?}");
        // Accepted, never answered: the request may have been processed.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let started = std::time::Instant::now();
        let r = transport(port, "", 300).send(&post("/x", ""), None).await;
        assert_eq!(r.unwrap_err(), SendError::Timeout);
        assert!(started.elapsed() < Duration::from_millis(1500));
        // The caller's deadline wins when it is sooner than the attempt timeout.
        let started = std::time::Instant::now();
        let r = transport(port, "", 10_000).send(&post("/x", ""), Some(Duration::from_millis(200))).await;
        assert_eq!(r.unwrap_err(), SendError::Timeout);
        assert!(started.elapsed() < Duration::from_millis(1500));
        held.abort();
        // Cut off mid-answer: broken, also ambiguous.
        let (port, _, _) = provider(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf".to_vec(), Then::Close).await;
        let r = transport(port, "", 2000).send(&post("/x", ""), None).await;
        assert!(matches!(r, Err(SendError::Broken(_))), "{r:?}");
    }

    #[tokio::test]
    async fn an_address_that_hangs_leaves_the_next_one_its_share_of_the_connect_budget() {
        // 127.0.0.2 takes no new connection (its accept queue is full, SYNs are dropped);
        // 127.0.0.1 on the same port answers.
        let (port, seen, _) = provider(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(), Then::Wait).await;
        let full = tokio::net::TcpSocket::new_v4().unwrap();
        full.bind(format!("127.0.0.2:{port}").parse().unwrap()).unwrap();
        let full = full.listen(1).unwrap();
        let mut filler = Vec::new();
        for _ in 0..4 {
            let s = tokio::net::TcpStream::connect(("127.0.0.2", port));
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), s).await {
                filler.push(s);
            }
        }
        let host = "two-addresses.paymux.test";
        DnsCache::global()
            .map
            .write()
            .unwrap()
            .insert(host.into(), vec!["127.0.0.2:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()]);
        let t = Transport {
            host: host.into(),
            port,
            tls: false,
            authority: format!("{host}:{port}"),
            prefix: String::new(),
            connect_timeout: Duration::from_millis(1000),
            attempt_timeout: Duration::from_millis(3000),
        };
        let started = std::time::Instant::now();
        let r = t.send(&post("/x", "1"), None).await;
        assert_eq!(r.map(|r| r.status), Ok(200));
        assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
        assert_eq!(seen.lock().unwrap().len(), 1);
        drop((full, filler));
    }

    #[tokio::test]
    async fn requests_the_reading_side_would_misjudge_are_not_sent() {
        let (port, seen, conns) = provider(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(), Then::Wait).await;
        let t = transport(port, "", 2000);
        let mut head = post("/x", "");
        head.method = http::Method::HEAD;
        let mut upgrade = post("/x", "");
        upgrade.headers.push(("Connection", "upgrade".into()));
        for req in [head, upgrade] {
            assert!(matches!(t.send(&req, None).await, Err(SendError::NotSent(_))));
        }
        assert_eq!((seen.lock().unwrap().len(), *conns.lock().unwrap()), (0, 0));
    }
}
