//! The payments API: a pingora HTTP app (HTTP/1.1 and HTTP/2, TLS when configured).
//!
//! This layer authenticates, validates, applies idempotency and renders JSON; everything about
//! providers happens in the engine. Each request takes one policy snapshot (one `ArcSwap`
//! load) and uses it to the end, so a reload never changes a request halfway.

pub mod http_util;
pub mod payments;
pub mod problem;
pub mod validate;

use crate::engine::{Ctx, Engine};
use crate::policy::Policy;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use problem::Problem;
use std::sync::Arc;
use std::time::Instant;

/// Shared state of the API and admin apps.
pub struct AppState {
    pub policy: Arc<ArcSwap<Policy>>,
    pub engine: Engine,
}

/// The payments API app.
pub struct ApiApp {
    pub state: Arc<AppState>,
}

/// Which endpoint a request hit (a bounded metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    CreatePayment,
    GetPayment,
    CancelPayment,
    CreateRefund,
    GetRefund,
    Webhook,
    Other,
}

impl Endpoint {
    const ALL: [Endpoint; 7] = [
        Endpoint::CreatePayment,
        Endpoint::GetPayment,
        Endpoint::CancelPayment,
        Endpoint::CreateRefund,
        Endpoint::GetRefund,
        Endpoint::Webhook,
        Endpoint::Other,
    ];

    fn label(&self) -> &'static str {
        match self {
            Endpoint::CreatePayment => "create_payment",
            Endpoint::GetPayment => "get_payment",
            Endpoint::CancelPayment => "cancel_payment",
            Endpoint::CreateRefund => "create_refund",
            Endpoint::GetRefund => "get_refund",
            Endpoint::Webhook => "webhook",
            Endpoint::Other => "other",
        }
    }
}

/// Creates the per-endpoint time series at zero, so a dashboard or an alert on `increase()`
/// sees the first request (a series that first appears at 1 has no increase).
pub fn init_series(m: &crate::metrics::Metrics) {
    for ep in Endpoint::ALL {
        m.request_latency.with_label_values(&[ep.label()]);
        m.request_duration.with_label_values(&[ep.label()]);
    }
}

/// Routes `method path` to an endpoint and its path parameter.
const NO_SUCH_ENDPOINT: &str = "no such endpoint; the API serves POST /v1/payments, GET /v1/payments/{id}, \
     POST /v1/payments/{id}/cancel, POST /v1/payments/{id}/refunds, GET /v1/refunds/{id} and \
     POST /v1/webhooks/{channel}";

pub fn route(method: &http::Method, path: &str) -> Result<(Endpoint, Option<String>), Problem> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (ep, allowed, param) = match segs.as_slice() {
        ["v1", "payments"] => (Endpoint::CreatePayment, "POST", None),
        ["v1", "payments", id] => (Endpoint::GetPayment, "GET", Some(*id)),
        ["v1", "payments", id, "cancel"] => (Endpoint::CancelPayment, "POST", Some(*id)),
        ["v1", "payments", id, "refunds"] => (Endpoint::CreateRefund, "POST", Some(*id)),
        ["v1", "refunds", id] => (Endpoint::GetRefund, "GET", Some(*id)),
        ["v1", "webhooks", ch] => (Endpoint::Webhook, "POST", Some(*ch)),
        // The path is not echoed: it is the caller's text, of any length and content.
        _ => return Err(Problem::new(404, "not_found", NO_SUCH_ENDPOINT)),
    };
    // HEAD is GET without the body (the session leaves the body out, RFC 9110 §9.3.2).
    let head_of_get = allowed == "GET" && *method == http::Method::HEAD;
    if method.as_str() != allowed && !head_of_get {
        let allowed = if allowed == "GET" { "GET, HEAD" } else { allowed };
        let mut p = Problem::new(405, "method_not_allowed", format!("this endpoint accepts {allowed} only"));
        p.allow = Some(allowed);
        return Err(p);
    }
    Ok((ep, param.map(String::from)))
}

#[async_trait]
impl ServeHttp for ApiApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let started = Instant::now();
        let request_id = crate::domain::new_id("req");
        let policy = self.state.policy.load_full();
        let method = s.req_header().method.clone();
        let path = s.req_header().uri.path().to_string();
        let mut subject: Option<String> = None;
        let mut ctx = Ctx {
            request_id: request_id.clone(),
            actor: String::new(),
            deadline: started + policy.server.request_deadline,
        };
        let ((endpoint, result), waited) = crate::metrics::with_provider_clock(async {
            match route(&method, &path) {
                Err(p) => (Endpoint::Other, Err(p)),
                Ok((ep, param)) => {
                    // Taken from the path before the caller is authenticated: only an id of ours
                    // goes into the audit record (a 60 KB path segment would otherwise land there).
                    if matches!(ep, Endpoint::GetPayment | Endpoint::CancelPayment | Endpoint::CreateRefund) {
                        subject = param.clone().filter(|p| crate::domain::is_id("pay", p));
                    }
                    let engine = &self.state.engine;
                    let param = param.unwrap_or_default();
                    (ep, payments::handle(engine, &policy, s, ep, param, &mut ctx, &mut subject).await)
                }
            }
        })
        .await;
        let code = result.as_ref().err().map(|p| p.code);
        let mut resp = result.unwrap_or_else(|p| http_util::problem(&p, &request_id));
        let m = &self.state.engine.metrics;
        m.http_requests.with_label_values(&[endpoint.label(), resp.status().as_str()]).inc();
        let took = started.elapsed();
        let own = took.saturating_sub(waited);
        m.request_latency.with_label_values(&[endpoint.label()]).observe(took.as_secs_f64());
        m.request_duration.with_label_values(&[endpoint.label()]).observe(own.as_secs_f64());
        // Every answer names its request (the audit records carry the same id).
        if let Ok(id) = http::HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-request-id", id);
        }
        // For an authenticated app only: a stranger gets no clock of paymux's inner work.
        if endpoint != Endpoint::Webhook && !ctx.actor.is_empty() {
            resp.headers_mut().insert("server-timing", http_util::server_timing(own, waited));
        }
        // One audit record per API call: who (key id, never the key), what, outcome.
        let actor = if ctx.actor.is_empty() { "anonymous".to_string() } else { ctx.actor };
        self.state
            .engine
            .audit
            .record(crate::audit::Event {
                request_id: Some(request_id),
                actor,
                action: "api.call",
                payment_id: subject,
                outcome: resp.status().as_u16().to_string(),
                details: serde_json::json!({"endpoint": endpoint.label(), "method": method.as_str(), "code": code}),
            })
            .await;
        resp
    }
}

/// Authenticates `Authorization: Bearer <key>`; returns the key id.
pub fn authenticate(policy: &Policy, s: &ServerSession) -> Result<String, Problem> {
    let mut all = s.req_header().headers.get_all(http::header::AUTHORIZATION).iter();
    let (h, more) = (all.next().and_then(|v| v.to_str().ok()), all.next().is_some());
    // One key per request: with two, a proxy in front may have checked the other one.
    if more {
        return Err(Problem::new(401, "unauthorized", "send one `Authorization` header, not several"));
    }
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let key = h
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, k)| k.trim())
        .filter(|k| !k.is_empty());
    let Some(key) = key else {
        return Err(Problem::new(401, "unauthorized", "send `Authorization: Bearer <api key>`"));
    };
    policy
        .authenticate(key)
        .map(String::from)
        .ok_or_else(|| Problem::new(401, "unauthorized", "the API key is not valid"))
}

/// Problem for an engine error.
pub fn engine_problem(e: &crate::engine::EngineError) -> Problem {
    use crate::engine::EngineError as E;
    match e {
        E::NotFound => Problem::new(404, "payment_not_found", "no payment with this id"),
        E::RefundNotFound => Problem::new(404, "refund_not_found", "no refund with this id"),
        E::NotCancelable(s) => Problem::new(
            409,
            "payment_not_cancelable",
            format!("the payment is {} and can no longer be canceled", s.as_str()),
        ),
        E::NotRefundable(s) => Problem::new(
            409,
            "payment_not_refundable",
            match s {
                crate::domain::PaymentStatus::Refunded => "the payment is already refunded in full".to_string(),
                s => format!("the payment is {}; only captured payments can be refunded", s.as_str()),
            },
        ),
        E::RefundExceeds { remaining } => {
            Problem::new(422, "refund_amount_exceeds", format!("at most {remaining} minor units are left to refund"))
        }
        E::OutcomeUnknown => Problem::new(
            409,
            "payment_outcome_unknown",
            "the provider has not confirmed whether it holds this payment (its answer was lost); paymux keeps checking, retry in a few seconds",
        ),
        E::ProviderRefused { code, message } => Problem::new(409, "provider_refused", format!("{code}: {message}")),
        E::ProviderUnavailable(c) => {
            Problem::new(502, "provider_unavailable", format!("no usable answer from the provider ({c})"))
        }
        E::Store(e) => {
            // The operator's to know (the app is told only to retry): a full disk, a lost mount.
            // Once a second at most: on a full disk every request fails, and the log may be
            // on that disk.
            static LOG: crate::log_limit::Once = crate::log_limit::Once::new();
            if LOG.now() {
                tracing::error!(error = %e, "the payment store failed; requests are answered 503 store_unavailable");
            }
            Problem::new(
            503,
            "store_unavailable",
            "the payment store is unavailable; retry with the same Idempotency-Key",
        )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn all_lists_every_endpoint_once() {
        // Exhaustive: a new endpoint does not compile until it is numbered here, and the
        // numbers say whether `ALL` lists it.
        let n = |e: Endpoint| match e {
            Endpoint::CreatePayment => 0,
            Endpoint::GetPayment => 1,
            Endpoint::CancelPayment => 2,
            Endpoint::CreateRefund => 3,
            Endpoint::GetRefund => 4,
            Endpoint::Webhook => 5,
            Endpoint::Other => 6,
        };
        let mut seen: Vec<usize> = Endpoint::ALL.iter().map(|&e| n(e)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
    }
}
