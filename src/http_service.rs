//! The pingora HTTP app both listeners run: pingora's one-request loop (read, answer, keep the
//! connection) around a [`ServeHttp`] (the payments API, the admin endpoints), plus an answer
//! for a request pingora cannot read. pingora's own `HttpServer` closes such a connection
//! without a word; here a malformed request line or header, or broken framing
//! (`Content-Length: abc`, two different lengths), gets a 400 `application/problem+json`
//! naming what was wrong, and a header section too large to read a 431, before the
//! connection closes. A connection closed while the client may still be sending (that
//! request unreadable, or answered before its body was read) closes gracefully: [`linger`].
//! An HTTP/1 client gets the policy's `header_timeout` to send a header section, in all:
//! pingora's own timeouts are per read, so a client sending a byte every few seconds would
//! otherwise hold its connection forever.

use crate::api::http_util;
use crate::api::problem::Problem;
use crate::metrics::Metrics;
use crate::policy::Policy;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// After answering a request it could not read: how long, and how many more bytes, to read
/// and drop before closing (see [`linger`]).
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 8 << 20;

/// A [`ServeHttp`] app as a pingora service app.
pub struct HttpService<SV> {
    pub app: SV,
    pub options: HttpServerOptions,
    /// Where an unreadable request is counted (`paymux_http_requests_total`, endpoint
    /// `other`) and audited (`api.call`, like every other call); the admin listener's are not.
    pub metrics: Option<Arc<Metrics>>,
    pub audit: Option<crate::audit::AuditLog>,
    /// The live policy, for its header timeout.
    pub policy: Arc<ArcSwap<Policy>>,
}

#[async_trait]
impl<SV: ServeHttp + Send + Sync + 'static> HttpServerApp for HttpService<SV> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // An HTTP/1.1 request names its host exactly once (RFC 9112 §3.2: else 400).
        let read = match self.read_request(&mut http).await {
            Ok(true) if !one_host(&http) => {
                Err(pingora::Error::explain(ErrorType::InvalidHTTPHeader, "HTTP/1.1 request without exactly one Host"))
            }
            read => read,
        };
        match read {
            Ok(true) => {}
            // Closed (or idle) before a request arrived.
            Ok(false) => return None,
            Err(e) => {
                // Not the error's context: pingora puts the bytes read there (an API key with them).
                tracing::debug!(kind = ?e.etype, cause = ?e.cause, "unreadable request");
                if e.etype == ErrorType::InvalidHTTPHeader {
                    let (p, request_id) = answer_unreadable(&mut http, header_too_large(&e)).await;
                    let status = if p.status == 431 { "431" } else { "400" };
                    if let Some(m) = &self.metrics {
                        m.http_requests.with_label_values(&["other", status]).inc();
                    }
                    if let Some(a) = &self.audit {
                        a.record(crate::audit::Event {
                            request_id: Some(request_id),
                            actor: "anonymous".into(),
                            action: "api.call",
                            payment_id: None,
                            outcome: status.into(),
                            details: serde_json::json!({"endpoint": "other", "method": null, "code": p.code}),
                        })
                        .await;
                    }
                    linger(http).await;
                }
                return None;
            }
        }
        // Kept alive as the request allows (pingora read HTTP/1.0 and `Connection: close`),
        // with paymux's idle timeout; never while shutting down, nor after a request framed
        // both by Transfer-Encoding and Content-Length (RFC 9112 §6.3: answer, then close).
        let h = &http.req_header().headers;
        let ambiguous = h.contains_key(http::header::TRANSFER_ENCODING) && h.contains_key(http::header::CONTENT_LENGTH);
        let keep = http.get_keepalive().is_some() && !*shutdown.borrow() && !ambiguous;
        http.set_keepalive(keep.then_some(60));
        let (parts, body) = self.app.response(&mut http).await.into_parts();
        let header: ResponseHeader = parts.into();
        if let Err(e) = http.write_response_header(Box::new(header)).await {
            tracing::debug!(error = %e, "writing a response header failed");
            return None;
        }
        // A HEAD answer is the GET answer's header alone.
        if !body.is_empty() && http.req_header().method != http::Method::HEAD {
            if let Err(e) = http.write_response_body(body.into(), true).await {
                tracing::debug!(error = %e, "writing a response body failed");
                return None;
            }
        }
        // Answered before its body was read (401, 413, 404, …): pingora does not keep such a
        // connection and would close it with the body's bytes unread.
        if !http.is_body_done() && matches!(&http, ServerSession::H1(s) if !s.will_keepalive()) {
            if let Err(e) = http.finish_body().await {
                tracing::debug!(error = %e, "finishing a response failed");
            }
            linger(http).await;
            return None;
        }
        let mut settings = HttpPersistentSettings::for_session(&http);
        settings.set_user_context(Box::new(KeptAlive));
        match http.finish().await {
            Ok(stream) => stream.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(e) => {
                tracing::debug!(error = %e, "finishing a response failed");
                None
            }
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

/// Carried to the next request of a kept-alive connection (pingora's connection context).
struct KeptAlive;

impl<SV> HttpService<SV> {
    /// pingora's `read_request`, within the header timeout for HTTP/1 (HTTP/2 frames its own
    /// streams). On a new connection the timeout runs from its start. On a kept-alive one
    /// the wait for the next request is part of the same call, so its idle allowance (60 s)
    /// is added: an idle connection is closed by pingora then, with no request pending, and
    /// only a client mid-header reaches the deadline. Out of time, the connection closes
    /// without an answer: pingora does not say whether anything was read.
    async fn read_request(&self, http: &mut ServerSession) -> pingora::Result<bool> {
        let limit = match &*http {
            ServerSession::H1(_) => {
                let header = self.policy.load().server.header_timeout;
                match http.take_connection_user_context() {
                    Some(_) => header + Duration::from_secs(http.get_keepalive().unwrap_or(0)),
                    None => header,
                }
            }
            _ => return http.read_request().await,
        };
        match tokio::time::timeout(limit, http.read_request()).await {
            Ok(read) => read,
            Err(_) => {
                tracing::debug!(after = ?limit, "request header not complete in time; connection closed");
                Ok(false)
            }
        }
    }
}

/// True when pingora refused the request for the size of its header section (over 1 MiB)
/// or its number of headers (over 256), not for its form. pingora 0.9 says which only in
/// its message (`api_inputs` pins both).
fn header_too_large(e: &pingora::Error) -> bool {
    let text = e.to_string();
    text.contains("Request header larger than") || text.contains("too many headers")
}

/// Answers a request whose header cannot be read: 431 when it is too large, else 400; the
/// problem sent and its request id, for the metrics and the audit log.
/// Whether a request names its host as it must: HTTP/1.1 with exactly one `Host` header
/// (HTTP/1.0 may omit it; HTTP/2 carries `:authority`).
fn one_host(http: &ServerSession) -> bool {
    let req = http.req_header();
    !matches!(http, ServerSession::H1(_))
        || req.version != http::Version::HTTP_11
        || req.headers.get_all(http::header::HOST).iter().count() == 1
}

async fn answer_unreadable(http: &mut ServerSession, too_large: bool) -> (Problem, String) {
    let request_id = crate::domain::new_id("req");
    let p = if too_large {
        Problem::new(
            431,
            "request_header_too_large",
            "the request's header section is over 1 MiB or has more than 256 headers",
        )
    } else {
        Problem::new(
            400,
            "malformed_http",
            "the request line, a header or the message framing (Content-Length, Transfer-Encoding) could not be read",
        )
    };
    let (parts, body) = http_util::problem(&p, &request_id).into_parts();
    let mut header: ResponseHeader = parts.into();
    let _ = header.insert_header("connection", "close");
    if let Err(e) = http.write_error_response(header, body.into()).await {
        tracing::debug!(error = %e, "answering an unreadable request failed");
    }
    (p, request_id)
}

/// Closes a connection after an answer while the client may still be sending (the rest of a
/// header, a body not read), without destroying the answer. Closing a
/// socket with unread bytes makes the kernel reset the connection: a client still writing
/// then fails on the reset before it reads the answer. So the write side is shut (the client
/// sees the answer, then the end), and what still arrives is read and dropped until the client
/// closes too, or `LINGER_BYTES` or `LINGER_TIME` is reached.
async fn linger(http: ServerSession) {
    let ServerSession::H1(session) = http else { return };
    let mut stream = session.into_inner();
    let drain = async {
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 16 << 10];
        let mut read = 0;
        while read < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}
