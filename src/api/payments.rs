//! Handlers: payments, refunds, webhooks; idempotency; JSON rendering.

use super::http_util::{json, read_body};
use super::problem::{FieldError, Problem};
use super::{authenticate, engine_problem, validate, Endpoint};
use crate::connector::CreateRequest;
use crate::domain::PaymentStatus;
use crate::engine::attempts::{Create, IdemSlot, Route};
use crate::engine::webhook::WebhookResult;
use crate::engine::{Ctx, Engine, EngineError, NewPayment, PaymentView};
use crate::policy::{Facts, Policy};
use crate::store::{now_ms, IdemClaim, IdemRecord, IdemState, RefundRow, StoreError};
use http::Response;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;

type Resp = Result<Response<Vec<u8>>, Problem>;

/// Dispatches one API request. Sets `ctx.actor` once the caller is known, and `subject` to
/// the payment a create made: the per-call audit record names both.
pub async fn handle(
    engine: &Engine,
    policy: &Arc<Policy>,
    s: &mut ServerSession,
    ep: Endpoint,
    param: String,
    ctx: &mut Ctx,
    subject: &mut Option<String>,
) -> Resp {
    if ep == Endpoint::Webhook {
        return webhook(engine, policy, s, &param, ctx).await;
    }
    let key_id = authenticate(policy, s)?;
    ctx.actor = key_id.clone();
    let ctx = &*ctx;
    match ep {
        Endpoint::CreatePayment => create(engine, policy, s, &key_id, ctx, subject).await,
        Endpoint::GetPayment => {
            // Ownership first: another key's id must not trigger a provider query.
            owned_by(&engine.view(&param).await.map_err(|e| engine_problem(&e))?, &key_id)?;
            let v = engine.get(ctx, policy, &param).await.map_err(|e| engine_problem(&e))?;
            Ok(json(200, payment_json(&v), &[]))
        }
        Endpoint::CancelPayment => {
            let v = engine.view(&param).await.map_err(|e| engine_problem(&e))?;
            owned_by(&v, &key_id)?;
            let v = engine.cancel(ctx, policy, &param).await.map_err(|e| engine_problem(&e))?;
            Ok(json(200, payment_json(&v), &[]))
        }
        Endpoint::CreateRefund => refund(engine, policy, s, &key_id, &param, ctx).await,
        Endpoint::GetRefund => {
            let r = engine.get_refund(&param).await.map_err(|e| engine_problem(&e))?;
            let v = engine.view(&r.payment_id).await.map_err(|e| engine_problem(&e))?;
            if v.payment.api_key_id != key_id {
                return Err(Problem::new(404, "refund_not_found", "no refund with this id"));
            }
            // The read's audit record names the payment (the refund is in its answer).
            *subject = Some(r.payment_id.clone());
            Ok(json(200, refund_json(&r), &[]))
        }
        Endpoint::Webhook | Endpoint::Other => Err(Problem::new(404, "not_found", "no such endpoint")),
    }
}

/// Payments are visible only to the API key that created them.
fn owned_by(v: &PaymentView, key_id: &str) -> Result<(), Problem> {
    if v.payment.api_key_id == key_id {
        Ok(())
    } else {
        Err(Problem::new(404, "payment_not_found", "no payment with this id"))
    }
}

fn idempotency_key(s: &ServerSession) -> Result<String, Problem> {
    let mut values = s.req_header().headers.get_all("idempotency-key").iter();
    let Some(v) = values.next() else {
        return Err(Problem::new(
            400,
            "idempotency_key_missing",
            "send an `Idempotency-Key` header (a unique string of at most 255 characters)",
        ));
    };
    // Two keys: which one the app meant is not for paymux to guess.
    if values.next().is_some() {
        return Err(Problem::new(400, "idempotency_key_invalid", "send one `Idempotency-Key` header, not several"));
    }
    let k = v
        .to_str()
        .map_err(|_| Problem::new(400, "idempotency_key_invalid", "`Idempotency-Key` must be printable ASCII"))?;
    if k.is_empty() || k.len() > 255 || !k.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(Problem::new(
            400,
            "idempotency_key_invalid",
            "`Idempotency-Key` must be 1-255 printable ASCII characters without spaces",
        ));
    }
    Ok(k.to_string())
}

/// Canonical hash of what a replay must match: endpoint, path parameter and parsed body.
fn request_hash(ep: Endpoint, param: &str, body: &Value) -> String {
    crate::crypto::sha256_hex(format!("{ep:?}\n{param}\n{body}").as_bytes())
}

/// A key already held by an earlier request: what that means for this one.
enum Held {
    /// Answer with this (a replay, a recovered resource, or a problem).
    Answer(Resp),
    /// The earlier request died before creating its resource; the key was released, so
    /// this request may claim it and proceed.
    Released,
}

/// Applies Stripe's idempotency rules to the record holding a key: a finished request
/// replays; a different request under the same key is 422; one still running is 409; one
/// abandoned (past twice the request deadline, or claimed before a restart) is answered from
/// the resource it created (`recover` renders it, or says it does not exist).
async fn held<F, Fut>(engine: &Engine, policy: &Policy, r: &IdemRecord, state: IdemState, recover: F) -> Held
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Recovered>, Problem>>,
{
    let (first_hash, resource) = match state {
        IdemState::Done { request_hash, status, body } => {
            if request_hash != r.request_hash {
                return Held::Answer(Err(reused()));
            }
            // A resource created but not final when first answered (a payment processing or
            // awaiting the payer, a refund pending) is looked at again, as one an abandoned
            // request left: the app is told where it stands. Only a final answer replaces the
            // stored one (two replays racing could otherwise store the older).
            if let Some(id) = unsettled(status, &body) {
                if let Ok(Some(Recovered { body: now, settled })) = recover(id).await {
                    if settled {
                        complete(engine, &r.api_key_id, &r.key, status, &now).await;
                    }
                    return Held::Answer(Ok(replay(status, now)));
                }
            }
            return Held::Answer(Ok(replay(status, body)));
        }
        IdemState::InFlight { request_hash, since, resource_id, orphaned } => {
            // Past any request's deadline, or claimed by a process that has since stopped.
            let abandoned = orphaned || r.created_at - since > 2 * policy.server.request_deadline.as_millis() as i64;
            (request_hash, resource_id.filter(|_| abandoned))
        }
    };
    if first_hash != r.request_hash {
        return Held::Answer(Err(reused()));
    }
    let Some(resource) = resource else {
        return Held::Answer(Err(in_use()));
    };
    match recover(resource.clone()).await {
        Ok(Some(Recovered { body, settled })) => {
            // Stored as the key's answer once final; until then each retry looks again.
            if settled {
                complete(engine, &r.api_key_id, &r.key, 201, &body).await;
            }
            Held::Answer(Ok(json(200, body, &[("idempotent-replayed", "true".into())])))
        }
        Ok(None) => {
            let (k, kk) = (r.api_key_id.clone(), r.key.clone());
            match crate::store::call(&engine.store, move |s| s.idem_release(&k, &kk, &resource)).await {
                Ok(()) => Held::Released,
                Err(e) => Held::Answer(Err(engine_problem(&e.into()))),
            }
        }
        Err(p) => Held::Answer(Err(p)),
    }
}

/// The id of the resource a stored 201 answer created, when that answer was not final: a
/// payment `processing` or `requires_action`, or failed only by paymux's inference (the
/// provider may still say otherwise); a refund `pending`.
fn unsettled(status: u16, body: &[u8]) -> Option<String> {
    if status != 201 {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    let open = match v.get("status")?.as_str()? {
        "processing" | "requires_action" | "pending" => true,
        "failed" => v.pointer("/error/code").and_then(Value::as_str) == Some(crate::engine::INFERRED_FAILURE),
        _ => false,
    };
    open.then(|| v.get("id")?.as_str().map(String::from)).flatten()
}

/// The resource an abandoned request created, as it stands now.
struct Recovered {
    body: Vec<u8>,
    /// Final: it will not change under the app any more.
    settled: bool,
}

fn in_use() -> Problem {
    Problem::new(
        409,
        "idempotency_key_in_use",
        "a request with this Idempotency-Key is still being processed; retry later",
    )
}

/// The first response again: a created resource replays as 200 (Stripe's convention), an
/// error replays with its own status and problem+json type.
fn replay(status: u16, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = json(if status == 201 { 200 } else { status }, body, &[("idempotent-replayed", "true".into())]);
    if status >= 400 {
        r.headers_mut().insert("content-type", http::HeaderValue::from_static("application/problem+json"));
    }
    r
}

fn reused() -> Problem {
    Problem::new(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request; use a new key")
}

async fn complete(engine: &Engine, key_id: &str, key: &str, status: u16, body: &[u8]) {
    let (k, kk, b) = (key_id.to_string(), key.to_string(), body.to_vec());
    if let Err(e) = crate::store::call(&engine.store, move |s| s.idem_complete(&k, &kk, status, &b)).await {
        tracing::error!(error = %e, "could not store the idempotent response");
    }
}

/// A claim for `key`, linked to the resource the request will create (chosen up front, so a
/// retry after a crash mid-request finds it instead of paying again).
fn idem_record(policy: &Policy, key_id: &str, key: &str, hash: String, resource: &str) -> IdemRecord {
    let now = now_ms();
    IdemRecord {
        api_key_id: key_id.to_string(),
        key: key.to_string(),
        request_hash: hash,
        resource_id: Some(resource.to_string()),
        created_at: now,
        expires_at: now + policy.server.idempotency_retention.as_millis() as i64,
    }
}

/// The payment id in a replayed create response (replays are rare; the first answer is
/// stored as rendered, so it is read back from there).
fn replayed_id(r: &Resp) -> Option<String> {
    let body = r.as_ref().ok().filter(|r| r.status().is_success())?.body();
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("id")?.as_str().map(String::from)
}

/// The payment a create's stopped first request left behind, for its retry (`np`: the
/// retried request, the same as the first).
async fn recover_payment(
    engine: &Engine,
    ctx: &Ctx,
    policy: &Policy,
    id: String,
    np: &crate::engine::NewPayment,
) -> Result<Option<Recovered>, Problem> {
    match engine.recover_created(ctx, policy, &id, np).await {
        Ok(v) => {
            let p = &v.payment;
            let settled = p.status.is_final() && !crate::engine::inferred_failure(p);
            Ok(Some(Recovered { body: payment_json(&v), settled }))
        }
        Err(crate::engine::EngineError::NotFound) => Ok(None),
        Err(e) => Err(engine_problem(&e)),
    }
}

async fn create(
    engine: &Engine,
    policy: &Arc<Policy>,
    s: &mut ServerSession,
    key_id: &str,
    ctx: &Ctx,
    subject: &mut Option<String>,
) -> Resp {
    let key = idempotency_key(s)?;
    let body = read_body(s, policy.server.max_body_bytes).await?;
    let ctx = &ctx.from_now(policy.server.request_deadline);
    let obj = validate::parse_object(&body)?;
    let np = validate::create(&obj)?;
    // A field sent as null is the field left out (validation reads both alike), so a retry
    // that drops or adds a null is the same request.
    let hash = request_hash(Endpoint::CreatePayment, "", &without_nulls(Value::Object(obj)));
    let payment_id = crate::domain::new_id("pay");
    let rec = idem_record(policy, key_id, &key, hash, &payment_id);
    let facts = Facts {
        method: np.method,
        currency: np.money.currency(),
        amount_minor: np.money.minor(),
        country: np.customer.as_ref().and_then(|c| c.country.as_deref()),
        metadata: &np.metadata,
        customer_id: np.customer.as_ref().and_then(|c| c.id.as_deref()),
        order_id: &np.order_id,
    };
    // Channels that cannot take this request, by what it says (Stripe's metadata limit, a
    // return URL AlipayHK needs, …), are left out like those that do not serve its method.
    let probe = probe(&np);
    let mut refusals = Vec::new();
    let (rule, channels) = match policy.router.evaluate(&facts) {
        Some(d) => {
            let chs: Vec<_> = d
                .channels
                .iter()
                .map(|i| policy.channels[*i].clone())
                .filter(|c| c.serves(np.method, np.money.currency()))
                .filter(|c| match c.connector.check_create(&probe) {
                    Ok(()) => true,
                    Err(e) => {
                        refusals.push(e);
                        false
                    }
                })
                .collect();
            (d.rule.to_string(), chs)
        }
        None => (String::new(), vec![]),
    };
    if channels.is_empty() {
        // A replay returns the first answer even if the policy no longer routes the request;
        // a payment no channel can take is not created and claims nothing.
        let (k, kk, now) = (rec.api_key_id.clone(), rec.key.clone(), rec.created_at);
        let existing = crate::store::call(&engine.store, move |s| s.idem_get(&k, &kk, now))
            .await
            .map_err(|e| engine_problem(&e.into()))?;
        if let Some(state) = existing {
            if let Held::Answer(r) =
                held(engine, policy, &rec, state, |id| recover_payment(engine, ctx, policy, id, &np)).await
            {
                *subject = replayed_id(&r);
                return r;
            }
        }
        if !refusals.is_empty() {
            // Routed, but no channel of the route can take the request as it is.
            let mut errors: Vec<FieldError> = Vec::new();
            for e in refusals {
                let fe = FieldError::new(e.field.unwrap_or(""), e.message);
                if !errors.contains(&fe) {
                    errors.push(fe);
                }
            }
            return Err(Problem::validation(errors));
        }
        let (method, currency) = (np.method, np.money.currency());
        let decision = json!({"rule": rule, "channels": [], "policy_version": policy.version, "method": method, "currency": currency.code()});
        engine.audit(ctx, "route.decision", None, "no_route", decision).await;
        return Err(Problem::new(
            422,
            "no_route",
            match rule.as_str() {
                "" => format!("no route takes `{method}` in {currency}: the policy has no default route"),
                r => format!("route `{r}` matched, but none of its channels takes `{method}` in {currency}"),
            },
        ));
    }
    let summary = json!({"method": np.method, "currency": np.money.currency().code(), "amount": np.money.minor()});
    let route = Route { rule, channels };
    // At most twice: a key released by `held` (its first request died before storing
    // anything) is claimed again by the second try.
    for _ in 0..2 {
        let job = Create {
            id: &payment_id,
            api_key_id: key_id,
            payment: &np,
            route: &route,
            idem: IdemSlot { claim: rec.clone(), render: payment_json },
        };
        match engine.create(ctx, policy.clone(), job).await {
            Ok((v, b)) => {
                *subject = Some(payment_id.clone());
                engine
                    .audit(
                        ctx,
                        "payment.create",
                        Some(&payment_id),
                        v.payment.status.as_str(),
                        json!({"channel": v.payment.channel, "attempts": v.attempts.len(), "payment": summary}),
                    )
                    .await;
                return Ok(json(201, b, &[("location", format!("/v1/payments/{payment_id}"))]));
            }
            Err(EngineError::Store(StoreError::KeyTaken(state))) => {
                match held(engine, policy, &rec, state, |id| recover_payment(engine, ctx, policy, id, &np)).await {
                    Held::Answer(r) => {
                        *subject = replayed_id(&r);
                        return r;
                    }
                    Held::Released => continue,
                }
            }
            Err(e) => {
                // The payment row may exist (its attempts are recorded); the key stays linked
                // to it so a retry with the same key recovers instead of paying again.
                *subject = Some(payment_id.clone());
                engine
                    .audit(
                        ctx,
                        "payment.create",
                        Some(&payment_id),
                        "error",
                        json!({"error": e.to_string(), "payment": summary}),
                    )
                    .await;
                return Err(engine_problem(&e));
            }
        }
    }
    Err(in_use())
}

async fn refund(
    engine: &Engine,
    policy: &Arc<Policy>,
    s: &mut ServerSession,
    key_id: &str,
    payment_id: &str,
    ctx: &Ctx,
) -> Resp {
    let key = idempotency_key(s)?;
    let body = read_body(s, policy.server.max_body_bytes).await?;
    let ctx = &ctx.from_now(policy.server.request_deadline);
    let nr = validate::refund(&body)?;
    let v = engine.view(payment_id).await.map_err(|e| engine_problem(&e))?;
    owned_by(&v, key_id)?;
    // An amount the holding channel cannot refund (a currency it refunds only in larger
    // steps) is refused before anything is claimed or reserved.
    if let (Some(a), Some(ch)) = (nr.amount, crate::engine::holding_channel(policy, &v.payment)) {
        if let Ok(money) = crate::domain::Money::new(a, v.payment.currency) {
            ch.connector
                .check_refund(money)
                .map_err(|e| Problem::validation(vec![FieldError::new(e.field.unwrap_or("amount"), e.message)]))?;
        }
    }
    let canon = json!({"amount": nr.amount, "reason": nr.reason});
    let hash = request_hash(Endpoint::CreateRefund, payment_id, &canon);
    let refund_id = crate::domain::new_id("re");
    let rec = idem_record(policy, key_id, &key, hash, &refund_id);
    let mut claimed = false;
    for _ in 0..2 {
        let r = rec.clone();
        let c = crate::store::call(&engine.store, move |s| s.idem_claim(&r))
            .await
            .map_err(|e| engine_problem(&e.into()))?;
        let state = match c {
            IdemClaim::Claimed => {
                claimed = true;
                break;
            }
            IdemClaim::Existing(state) => state,
        };
        // A crash after the claim may have left the refund reserved: answer with it (a
        // callback or the reconciler settles it).
        let recover = |id: String| async move {
            match engine.get_refund(&id).await {
                Ok(r) => Ok(Some(Recovered { body: refund_json(&r), settled: r.status != "pending" })),
                Err(EngineError::RefundNotFound) => Ok(None),
                Err(e) => Err(engine_problem(&e)),
            }
        };
        if let Held::Answer(r) = held(engine, policy, &rec, state, recover).await {
            return r;
        }
    }
    if !claimed {
        return Err(in_use());
    }
    match engine.refund(ctx, policy, payment_id, &refund_id, nr.amount, nr.reason).await {
        Ok(r) => {
            let b = refund_json(&r);
            complete(engine, key_id, &key, 201, &b).await;
            Ok(json(201, b, &[("location", format!("/v1/refunds/{refund_id}"))]))
        }
        Err(e) => {
            let p = engine_problem(&e);
            // Rule violations are final answers for this key; transient failures are not.
            if p.status < 500 {
                let mut stored = p.clone();
                stored.request_id = None;
                complete(engine, key_id, &key, p.status, &serde_json::to_vec(&stored).unwrap_or_default()).await;
            } else {
                // Nothing reserved, or a refund that certainly refunded nothing (the provider
                // could not be reached): a retry may start afresh. A refund still pending
                // keeps the claim, so a retry finds that refund instead of refunding again.
                let retry_afresh = match engine.get_refund(&refund_id).await {
                    Err(EngineError::RefundNotFound) => true,
                    Ok(r) => r.status == "failed",
                    Err(_) => false,
                };
                if retry_afresh {
                    let (k, kk, rid) = (key_id.to_string(), key.clone(), refund_id.clone());
                    let _ = crate::store::call(&engine.store, move |s| s.idem_release(&k, &kk, &rid)).await;
                }
            }
            Err(p)
        }
    }
}

async fn webhook(engine: &Engine, policy: &Arc<Policy>, s: &mut ServerSession, channel: &str, ctx: &mut Ctx) -> Resp {
    let Some(ch) = policy.holding_channel(channel).cloned() else {
        // Never a caller-chosen string in the audit log's actor field.
        ctx.actor = "provider:unknown".into();
        // Named back only when it could be a channel id: the path is the caller's text.
        let detail = if crate::domain::is_channel_id(channel) && !super::validate::holds_card_number(channel) {
            format!("no channel `{channel}` in the current policy")
        } else {
            "no such channel in the current policy".to_string()
        };
        return Err(Problem::new(404, "unknown_channel", detail));
    };
    ctx.actor = format!("provider:{channel}");
    let ctx = &*ctx;
    let body = read_body(s, policy.server.max_body_bytes).await?;
    let headers = s.req_header().headers.clone();
    match engine.webhook(ctx, &ch, &headers, &body).await.map_err(|e| engine_problem(&e))? {
        WebhookResult::Ack { .. } => {
            let (ct, b) = ch.connector.webhook_ack();
            let mut r = json(200, b.to_vec(), &[]);
            r.headers_mut().insert("content-type", http::HeaderValue::from_static(ct));
            Ok(r)
        }
        WebhookResult::Retry => Err(Problem::new(
            503,
            "webhook_deferred",
            "the payment this callback is about is still being created; deliver it again",
        )),
        WebhookResult::Rejected(e @ crate::connector::WebhookError::Malformed(_)) => {
            Err(Problem::new(400, "webhook_malformed", format!("callback verified but not understood: {e}")))
        }
        WebhookResult::Rejected(e) => {
            Err(Problem::new(401, "webhook_signature_invalid", format!("callback refused: {e}")))
        }
    }
}

/// A stored time (Unix ms) as RFC 3339 UTC with exactly three fractional digits
/// (`2026-11-27T08:00:01.500Z`): a fixed width, for parsers with a fixed pattern.
fn rfc3339(ms: i64) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&f).ok())
        .unwrap_or_default()
}

/// The public JSON of a payment: a payment's fields in key order, serialised straight from
/// the stored rows (one allocation for the output; a `json!` tree cost a few allocations per
/// field, on every create's path).
pub fn payment_json(v: &PaymentView) -> Vec<u8> {
    let p = &v.payment;
    let shows_error = matches!(p.status, PaymentStatus::Failed | PaymentStatus::Processing);
    let out = PaymentOut {
        amount: p.amount,
        amount_refunded: p.refunded,
        attempts: AttemptsOut(&v.attempts),
        channel: p.channel.as_deref(),
        created_at: rfc3339(p.created_at),
        currency: p.currency.code(),
        error: p
            .error_code
            .as_deref()
            .filter(|_| shows_error)
            .map(|code| ErrorOut { code, message: p.error_message.as_deref() }),
        id: &p.id,
        metadata: &p.metadata,
        method: p.method.as_str(),
        next_action: p.next_action.as_ref(),
        object: "payment",
        order_id: &p.order_id,
        route: RouteOut { rule: &p.route_rule },
        status: p.status.as_str(),
        updated_at: rfc3339(p.updated_at),
    };
    let mut buf = Vec::with_capacity(512);
    match serde_json::to_writer(&mut buf, &out) {
        Ok(()) => buf,
        Err(_) => Vec::new(),
    }
}

// Fields in alphabetical order: the order the public JSON has always had.
#[derive(serde::Serialize)]
struct PaymentOut<'a> {
    amount: i64,
    amount_refunded: i64,
    attempts: AttemptsOut<'a>,
    channel: Option<&'a str>,
    created_at: String,
    currency: &'a str,
    error: Option<ErrorOut<'a>>,
    id: &'a str,
    metadata: &'a Value,
    method: &'a str,
    next_action: Option<&'a Value>,
    object: &'static str,
    order_id: &'a str,
    route: RouteOut<'a>,
    status: &'a str,
    updated_at: String,
}

#[derive(serde::Serialize)]
struct ErrorOut<'a> {
    code: &'a str,
    message: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct RouteOut<'a> {
    rule: &'a str,
}

struct AttemptsOut<'a>(&'a [crate::store::AttemptRow]);

impl serde::Serialize for AttemptsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct AttemptOut<'a> {
            channel: &'a str,
            error_code: Option<&'a str>,
            latency_ms: i64,
            outcome: &'a str,
        }
        s.collect_seq(self.0.iter().map(|a| AttemptOut {
            channel: &a.channel,
            error_code: a.error_code.as_deref(),
            latency_ms: a.latency_ms,
            outcome: &a.outcome,
        }))
    }
}

/// The public JSON of a refund.
pub fn refund_json(r: &RefundRow) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": r.id,
        "object": "refund",
        "payment_id": r.payment_id,
        "amount": r.amount,
        "currency": r.currency.code(),
        "status": r.status,
        "reason": r.reason,
        "error_code": r.error_code,
        "created_at": rfc3339(r.created_at),
    }))
    .unwrap_or_default()
}

/// `v` with every null object member left out, at any depth.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, without_nulls(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        v => v,
    }
}

/// The request as a connector sees it, without the ids a create assigns: what
/// `Connector::check_create` judges.
fn probe(np: &NewPayment) -> CreateRequest<'_> {
    let customer = np.customer.as_ref();
    CreateRequest {
        payment_id: "",
        attempt_ref: "",
        money: np.money,
        method: np.method,
        order_id: &np.order_id,
        customer_id: customer.and_then(|c| c.id.as_deref()),
        customer_email: customer.and_then(|c| c.email.as_deref()),
        payment_method_data: np.payment_method_data.as_ref(),
        return_url: np.return_url.as_deref(),
        metadata: &np.metadata,
        notify_url: "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Currency, Method};
    use crate::store::{AttemptRow, PaymentRow};

    fn view(status: PaymentStatus) -> PaymentView {
        let mut declined = AttemptRow::pending("pay_1", 1, "stripe_primary", 0);
        declined.outcome = "not_processed".into();
        declined.error_code = Some("http_429".into());
        declined.latency_ms = 12;
        let mut accepted = AttemptRow::pending("pay_1", 2, "stripe \"backup\"", 0);
        accepted.outcome = "accepted".into();
        accepted.latency_ms = 3;
        PaymentView {
            payment: PaymentRow {
                id: "pay_1".into(),
                api_key_id: "key_secret_id".into(),
                order_id: "order-7".into(),
                method: Method::Visa,
                amount: 1999,
                currency: Currency::parse("HKD").unwrap(),
                status,
                channel: Some("stripe \"backup\"".into()),
                attempt_ref: Some("pay_1_2".into()),
                provider_ref: Some("pi_9".into()),
                route_rule: "cards".into(),
                next_action: Some(json!({"type": "redirect", "url": "https://example.test/3ds?a=1&b=é"})),
                error_code: Some("card_declined".into()),
                error_message: Some("Your card was declined.".into()),
                refunded: 500,
                metadata: json!({"z": "last", "a": "first"}),
                customer: json!({"email": "payer@example.test"}),
                return_url: Some("https://shop.example/back".into()),
                policy_version: "v1".into(),
                created_at: 1_764_000_000_123,
                updated_at: 1_764_000_001_000,
                reconcile_at: None,
                reconcile_backoff_ms: 0,
            },
            attempts: vec![declined, accepted],
        }
    }

    #[test]
    fn a_payment_renders_its_public_fields_in_key_order_and_nothing_else() {
        let body = String::from_utf8(payment_json(&view(PaymentStatus::Failed))).unwrap();
        assert_eq!(
            body,
            concat!(
                r#"{"amount":1999,"amount_refunded":500,"attempts":["#,
                r#"{"channel":"stripe_primary","error_code":"http_429","latency_ms":12,"outcome":"not_processed"},"#,
                r#"{"channel":"stripe \"backup\"","error_code":null,"latency_ms":3,"outcome":"accepted"}],"#,
                r#""channel":"stripe \"backup\"","created_at":"2025-11-24T16:00:00.123Z","currency":"HKD","#,
                r#""error":{"code":"card_declined","message":"Your card was declined."},"id":"pay_1","#,
                r#""metadata":{"a":"first","z":"last"},"method":"visa","#,
                r#""next_action":{"type":"redirect","url":"https://example.test/3ds?a=1&b=é"},"#,
                r#""object":"payment","order_id":"order-7","route":{"rule":"cards"},"status":"failed","#,
                r#""updated_at":"2025-11-24T16:00:01.000Z"}"#
            )
        );
        // Never the API key id, the customer, the return URL or provider references.
        for hidden in ["key_secret_id", "payer@example.test", "shop.example", "pi_9", "pay_1_2", "v1"] {
            assert!(!body.contains(hidden), "{hidden} leaked into {body}");
        }
    }

    #[test]
    fn an_error_shows_only_while_the_payment_failed_or_is_still_processing() {
        for (status, shown) in [
            (PaymentStatus::Failed, true),
            (PaymentStatus::Processing, true),
            (PaymentStatus::Succeeded, false),
            (PaymentStatus::RequiresAction, false),
            (PaymentStatus::Refunded, false),
        ] {
            let mut v = view(status);
            let body: Value = serde_json::from_slice(&payment_json(&v)).unwrap();
            assert_eq!(body["error"].is_object(), shown, "{status:?}");
            v.payment.error_code = None;
            let body: Value = serde_json::from_slice(&payment_json(&v)).unwrap();
            assert!(body["error"].is_null(), "{status:?} without a code");
            assert!(body.as_object().unwrap().contains_key("error"));
        }
        let mut v = view(PaymentStatus::Processing);
        (v.payment.channel, v.payment.next_action, v.payment.error_message) = (None, None, None);
        let body: Value = serde_json::from_slice(&payment_json(&v)).unwrap();
        assert_eq!(body["error"], json!({"code": "card_declined", "message": null}));
        assert!(body["channel"].is_null() && body["next_action"].is_null());
    }
}
