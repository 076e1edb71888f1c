//! The API's pingora HTTP app: pingora's one-request loop (read, answer, keep the connection)
//! around [`ApiApp`], plus an answer for a request pingora cannot read. pingora's own
//! `HttpServer` closes such a connection without a word; here a malformed request line or
//! header, or broken framing (`Content-Length: abc`, two different lengths), gets a 400
//! `application/problem+json` naming what was wrong before the connection closes.

use super::problem::Problem;
use super::{http_util, ApiApp};
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use std::sync::Arc;

/// The payments API as a pingora service app.
pub struct ApiService {
    pub app: ApiApp,
    pub options: HttpServerOptions,
}

#[async_trait]
impl HttpServerApp for ApiService {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            // Closed (or idle) before a request arrived.
            Ok(false) => return None,
            Err(e) => {
                if e.etype == ErrorType::InvalidHTTPHeader {
                    answer_unreadable(&mut http).await;
                    let m = &self.app.state.engine.metrics;
                    m.http_requests.with_label_values(&["other", "400"]).inc();
                }
                tracing::debug!(error = %e, "unreadable request");
                return None;
            }
        }
        http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let (parts, body) = self.app.response(&mut http).await.into_parts();
        let header: ResponseHeader = parts.into();
        if let Err(e) = http.write_response_header(Box::new(header)).await {
            tracing::debug!(error = %e, "writing a response header failed");
            return None;
        }
        if !body.is_empty() {
            if let Err(e) = http.write_response_body(body.into(), true).await {
                tracing::debug!(error = %e, "writing a response body failed");
                return None;
            }
        }
        let settings = HttpPersistentSettings::for_session(&http);
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

/// 400 problem+json for a request whose line, headers or framing cannot be read.
async fn answer_unreadable(http: &mut ServerSession) {
    let request_id = crate::domain::new_id("req");
    let p = Problem::new(
        400,
        "malformed_http",
        "the request line, a header or the message framing (Content-Length, Transfer-Encoding) could not be read",
    );
    let (parts, body) = http_util::problem(&p, &request_id).into_parts();
    let mut header: ResponseHeader = parts.into();
    let _ = header.insert_header("connection", "close");
    if let Err(e) = http.write_error_response(header, body.into()).await {
        tracing::debug!(error = %e, "answering an unreadable request failed");
    }
}
