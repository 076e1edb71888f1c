//! Small HTTP helpers for the pingora apps: bounded body reading and response building.

use super::problem::Problem;
use bytes::BytesMut;
use http::Response;
use pingora::protocols::http::ServerSession;
use std::time::Duration;

/// How long a request body may take to arrive, whole.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the whole request body, refusing more than `limit` bytes with 413.
pub async fn read_body(s: &mut ServerSession, limit: usize) -> Result<Vec<u8>, Problem> {
    let too_large = || Problem::new(413, "body_too_large", format!("the request body must be at most {limit} bytes"));
    if let Some(cl) = s.req_header().headers.get(http::header::CONTENT_LENGTH) {
        match cl.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(n) if n > limit as u64 => return Err(too_large()),
            Some(_) => {}
            // (A list, even of one value repeated, is refused: RFC 9110 §8.6 lets a recipient.)
            None => {
                s.set_keepalive(None);
                return Err(Problem::new(400, "malformed_http", "invalid Content-Length header"));
            }
        }
    }
    // Bodies are read as they come: a coding paymux would have to undo is refused by name
    // rather than read as garbled JSON (RFC 9110 §8.4, RFC 9112 §6.1).
    let headers = &s.req_header().headers;
    if codings_besides(headers, http::header::CONTENT_ENCODING, "identity") {
        return Err(Problem::new(
            415,
            "unsupported_content_encoding",
            "send the body without Content-Encoding (paymux reads plain JSON)",
        ));
    }
    if codings_besides(headers, http::header::TRANSFER_ENCODING, "chunked") {
        s.set_keepalive(None);
        return Err(Problem::new(
            501,
            "unsupported_transfer_encoding",
            "paymux takes only the chunked transfer coding",
        ));
    }
    // A client that waits for a go-ahead before sending the body (RFC 9110 §10.1.1) gets it
    // here, once the request was found acceptable so far; without it, curl waits a second.
    let expects_continue = s
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // (An HTTP/1.0 client cannot take a 1xx answer: its expectation is ignored, RFC 9110 §10.1.1.)
    let h11 = s.req_header().version == http::Version::HTTP_11;
    // Writing the 100 before the body makes pingora give up keep-alive (an answer before the
    // body is read); it is given back once the body has been read whole.
    let keepalive = s.get_keepalive();
    let continued = expects_continue && h11 && matches!(s, ServerSession::H1(_));
    if continued && s.write_continue_response().await.is_err() {
        return Err(Problem::new(400, "request_body_unreadable", "the connection closed before the body was sent"));
    }
    // The whole body within BODY_TIMEOUT, however it trickles in: one deadline around the
    // reads (pingora's read timeout is per read on HTTP/1.1 and not applied on HTTP/2).
    let deadline = tokio::time::Instant::now() + BODY_TIMEOUT;
    let mut buf = BytesMut::new();
    loop {
        let Ok(read) = tokio::time::timeout_at(deadline, s.read_request_body()).await else {
            s.set_keepalive(None);
            return Err(Problem::new(
                408,
                "request_body_timeout",
                "the request body did not arrive within 10 seconds (fewer bytes than Content-Length?)",
            ));
        };
        match read {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                // Where the body ends is in doubt, so nothing after it on this connection can
                // be read as a request: answer, then close. The library's words go to the log.
                tracing::debug!(error = %e, "unreadable request body");
                s.set_keepalive(None);
                return Err(Problem::new(
                    400,
                    "request_body_unreadable",
                    "the request body could not be read: its framing is invalid (a malformed chunk?)",
                ));
            }
        }
    }
    if continued {
        s.set_keepalive(keepalive);
    }
    Ok(buf.to_vec())
}

/// Whether header `name` lists a coding other than `allowed` (an unreadable value counts).
fn codings_besides(headers: &http::HeaderMap, name: http::header::HeaderName, allowed: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        // Empty list elements count for nothing (RFC 9110 §5.6.1): `Content-Encoding:` is none.
        .any(|c| !c.trim().is_empty() && !c.trim().eq_ignore_ascii_case(allowed))
}

/// A JSON response.
pub fn json(status: u16, body: Vec<u8>, extra: &[(&str, String)]) -> Response<Vec<u8>> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .header("cache-control", "no-store");
    for (k, v) in extra {
        b = b.header(*k, v);
    }
    b.body(body).unwrap_or_else(|_| Response::new(Vec::new()))
}

/// A problem+json response.
pub fn problem(p: &Problem, request_id: &str) -> Response<Vec<u8>> {
    let mut p = p.clone();
    p.request_id = Some(request_id.to_string());
    let body = serde_json::to_vec(&p).unwrap_or_default();
    let mut r = json(p.status, body, &[("x-request-id", request_id.to_string())]);
    r.headers_mut().insert("content-type", http::HeaderValue::from_static("application/problem+json"));
    if let Some(allow) = p.allow {
        r.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    }
    // A 401 names the scheme it wants (RFC 9110 §11.6.1).
    if p.code == "unauthorized" {
        r.headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer realm=\"paymux\""));
    }
    r
}

/// The W3C `Server-Timing` header of an API response: paymux's own time and the time spent
/// waiting on providers, in milliseconds, so an app can tell which side a slow answer came
/// from.
pub fn server_timing(own: Duration, provider: Duration) -> http::HeaderValue {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let v = format!("paymux;dur={:.3}, provider;dur={:.3}", ms(own), ms(provider));
    http::HeaderValue::from_str(&v).unwrap_or_else(|_| http::HeaderValue::from_static("paymux"))
}

/// A plain-text response.
pub fn text(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len().to_string())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}
