//! Stripe simulator, compatible with the official SDKs pointed at it (`stripe.api_base`):
//! PaymentIntents (create, confirm, capture, cancel, retrieve, list, search), Refunds, Charges
//! and PaymentMethods (retrieve); Bearer auth; `Idempotency-Key` replay; test cards
//! (`cards.rs`) including declines and 3-D Secure with a challenge page on the
//! simulator's port; webhooks signed `t=<unix>,v1=<hmac>`.
//!
//! Request pipeline (this file): auth → route → params → idempotency → fault gate → handler
//! (`handlers.rs`, plain functions over the locked state; the events they record are sent
//! after the lock is released). `params.rs` reads parameters, `model.rs` renders objects and
//! errors, `search.rs` parses search queries.

mod cards;
mod handlers;
mod listing;
mod model;
mod params;
mod search;

use crate::connector::stripe::API_VERSION;
use crate::crypto;
use crate::domain::{new_id, Currency};
use crate::sandbox::callbacks::{Ack, Callback, Dispatcher};
use crate::sandbox::faults::{FaultGate, Op};
use crate::sandbox::form::{self, Params};
use crate::sandbox::http::{match_path, Reply, Request, Response};
use crate::sandbox::idempotency::{Begin, IdempotencyStore};
use crate::sandbox::pages;
use crate::sandbox::sim::{ActionError, Simulator, Stats, Table};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use model::{intent_json, ApiError, Charge, Intent, PaymentMethod, PiStatus, Refund};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the sandbox needs to run one Stripe instance.
pub(crate) struct StripeSetup {
    pub name: String,
    /// `http://host:port` of the simulator, for the 3-D Secure page URLs.
    pub base_url: String,
    pub api_key: String,
    pub webhook_secret: String,
    pub webhook_url: Option<String>,
}

/// One simulated Stripe account.
pub(crate) struct StripeSim {
    setup: StripeSetup,
    state: Mutex<State>,
    idempotency: IdempotencyStore,
    stats: Arc<Stats>,
    dispatcher: Dispatcher,
}

#[derive(Default)]
struct State {
    intents: Table<Intent>,
    /// PaymentIntent ids in creation order.
    order: Vec<String>,
    charges: Table<Charge>,
    refunds: Table<Refund>,
    methods: Table<PaymentMethod>,
}

/// What a handler may record besides its answer.
struct Ctx<'a> {
    request_id: Option<&'a str>,
    idempotency_key: Option<&'a str>,
    events: Vec<(&'static str, Value)>,
}

impl Ctx<'_> {
    fn event(&mut self, kind: &'static str, object: Value) {
        self.events.push((kind, object));
    }
}

type Run = fn(&StripeSim, &mut State, &mut Ctx<'_>, &Params, &[String]) -> Result<Value, ApiError>;

struct Route {
    method: &'static str,
    pattern: &'static str,
    op: Op,
    run: Run,
}

/// The API surface, first match wins (`search` before `:id`).
const ROUTES: &[Route] = &[
    Route { method: "POST", pattern: "/v1/payment_intents", op: Op::Create, run: StripeSim::create_intent },
    Route { method: "GET", pattern: "/v1/payment_intents", op: Op::Query, run: StripeSim::list_intents },
    Route { method: "GET", pattern: "/v1/payment_intents/search", op: Op::Query, run: StripeSim::search_intents },
    Route { method: "GET", pattern: "/v1/payment_intents/:id", op: Op::Query, run: StripeSim::retrieve_intent },
    Route { method: "POST", pattern: "/v1/payment_intents/:id", op: Op::Create, run: StripeSim::update_intent },
    Route {
        method: "POST",
        pattern: "/v1/payment_intents/:id/confirm",
        op: Op::Create,
        run: StripeSim::confirm_intent,
    },
    Route {
        method: "POST",
        pattern: "/v1/payment_intents/:id/capture",
        op: Op::Capture,
        run: StripeSim::capture_intent,
    },
    Route { method: "POST", pattern: "/v1/payment_intents/:id/cancel", op: Op::Cancel, run: StripeSim::cancel_intent },
    Route { method: "POST", pattern: "/v1/refunds", op: Op::Refund, run: StripeSim::create_refund },
    Route { method: "GET", pattern: "/v1/refunds", op: Op::Query, run: StripeSim::list_refunds },
    Route { method: "GET", pattern: "/v1/refunds/:id", op: Op::Query, run: StripeSim::retrieve_refund },
    Route { method: "POST", pattern: "/v1/refunds/:id", op: Op::Refund, run: StripeSim::update_refund },
    Route { method: "GET", pattern: "/v1/charges", op: Op::Query, run: StripeSim::list_charges },
    Route { method: "GET", pattern: "/v1/charges/:id", op: Op::Query, run: StripeSim::retrieve_charge },
    Route { method: "GET", pattern: "/v1/payment_methods/:id", op: Op::Query, run: StripeSim::retrieve_payment_method },
];

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn respond(r: Response) -> Reply {
    Reply::Respond(r)
}

fn first(ids: &[String]) -> &str {
    ids.first().map(String::as_str).unwrap_or("")
}

/// An amount as Stripe's messages write it, in Stripe's units: ISO 4217 minor units but for
/// ISK (two decimals at Stripe, none in ISO) and MGA (none at Stripe, two in ISO).
fn major(currency: &str, amount: i64) -> String {
    let code = currency.to_ascii_uppercase();
    let exponent = match code.as_str() {
        "ISK" => Some(2),
        "MGA" => Some(0),
        c => Currency::parse(c).ok().map(|c| c.exponent()),
    };
    match exponent {
        None => format!("{amount} {currency}"),
        Some(0) => format!("{code} {amount}"),
        Some(e) => {
            let unit = 10i64.pow(u32::from(e));
            format!("{code} {}.{:0width$}", amount / unit, amount % unit, width = usize::from(e))
        }
    }
}

fn mask_key(key: &str) -> String {
    let n = key.chars().count();
    if n <= 12 {
        return "*".repeat(n);
    }
    let head: String = key.chars().take(8).collect();
    let tail: String = key.chars().skip(n - 4).collect();
    format!("{head}{}{tail}", "*".repeat(n - 12))
}

impl StripeSim {
    pub(crate) fn new(setup: StripeSetup, stats: Arc<Stats>, dispatcher: Dispatcher) -> Self {
        StripeSim { setup, state: Mutex::default(), idempotency: IdempotencyStore::default(), stats, dispatcher }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn authenticate(&self, req: &Request) -> Result<(), ApiError> {
        let Some(h) = req.header("authorization") else {
            return Err(ApiError::auth(
                "You did not provide an API key. You need to provide your API key in the Authorization header, \
using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication \
for details, or we can help at https://support.stripe.com/.",
                None,
            ));
        };
        let key = if let Some(k) = h.strip_prefix("Bearer ") {
            k.trim().to_string()
        } else if let Some(b) = h.strip_prefix("Basic ") {
            let user_pass = B64.decode(b.trim()).ok().and_then(|d| String::from_utf8(d).ok()).unwrap_or_default();
            user_pass.split(':').next().unwrap_or("").to_string()
        } else {
            String::new()
        };
        if crypto::ct_eq(key.as_bytes(), self.setup.api_key.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::auth(format!("Invalid API Key provided: {}", mask_key(&key)), Some("api_key_invalid")))
        }
    }

    async fn api(&self, req: &Request, rid: &str, gate: &FaultGate) -> Reply {
        if let Err(e) = self.authenticate(req) {
            return respond(e.response(rid));
        }
        let method = req.method.as_str();
        let found = ROUTES.iter().find_map(|r| {
            if r.method != method {
                return None;
            }
            match_path(r.pattern, &req.path).map(|ids| (r, ids))
        });
        let Some((route, ids)) = found else {
            return respond(ApiError::unrecognized(method, &req.path).response(rid));
        };
        let raw: &[u8] = if method == "GET" { req.query.as_bytes() } else { &req.body };
        let params = match form::parse(raw) {
            Ok(p) => p,
            Err(e) => return respond(ApiError::invalid(e.to_string(), Some(&e.key), None).response(rid)),
        };
        let key = if method == "POST" { req.header("idempotency-key").filter(|k| !k.is_empty()) } else { None };
        if let Some(k) = key {
            if k.len() > 255 {
                return respond(
                    ApiError::invalid("Idempotency-Key must be at most 255 characters long.", None, None).response(rid),
                );
            }
            // Stripe compares the parameters, not their bytes: the same ones in another order
            // are the same request (the map is ordered by name).
            let canonical = Value::Object(params.0.clone()).to_string();
            let fingerprint = crypto::sha256_hex(
                &[method.as_bytes(), b" ", req.path.as_bytes(), b"\n", canonical.as_bytes()].concat(),
            );
            match self.idempotency.begin(k, &fingerprint) {
                Begin::New => {}
                Begin::Replay(r) => return respond(replayed(r, rid)),
                Begin::Mismatch => {
                    return respond(ApiError::idempotency_mismatch(format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. \
Try using a key other than '{k}' if you meant to execute a different request."
                    )).response(rid))
                }
                Begin::InFlight => {
                    return respond(ApiError::idempotency_in_use(format!(
                        "There is currently another in-progress request using this Idempotent Key (that probably means \
you submitted twice, and the other request is still going through): {k}. Please try again later."
                    )).response(rid))
                }
            }
        }
        let gated = gate
            .run(
                route.op,
                || self.execute(route, &ids, &params, rid, key),
                |status| ApiError::injected(status).response(rid).header("Request-Id", rid),
            )
            .await;
        if let Some(k) = key {
            // Requests refused before they changed anything are not kept, so they can be fixed and retried.
            let keep = gated.processed.filter(|r| matches!(r.status, 200..=299 | 402 | 500..=599));
            self.idempotency.finish(k, keep);
        }
        gated.reply
    }

    fn execute(&self, route: &Route, ids: &[String], p: &Params, rid: &str, key: Option<&str>) -> Response {
        let mut ctx = Ctx { request_id: Some(rid), idempotency_key: key, events: Vec::new() };
        let result = {
            let mut st = self.lock();
            (route.run)(self, &mut st, &mut ctx, p, ids).and_then(|v| handlers::expand(&st, p, v))
        };
        self.emit(ctx);
        match result {
            Ok(v) => Response::json(200, &v),
            Err(e) => e.response(rid),
        }
        .header("Request-Id", rid)
    }

    /// Sends the recorded events as signed webhooks.
    fn emit(&self, ctx: Ctx<'_>) {
        let Some(url) = &self.setup.webhook_url else { return };
        for (kind, object) in ctx.events {
            let id = new_id("evt");
            let event = json!({
                "id": id,
                "object": "event",
                "api_version": API_VERSION,
                "created": now(),
                "data": {"object": object},
                "livemode": false,
                "pending_webhooks": 1,
                "request": {"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
                "type": kind,
            });
            let secret = self.setup.webhook_secret.clone();
            self.dispatcher.send(Callback {
                url: url.clone(),
                label: format!("{kind} {id}"),
                body: Bytes::from(event.to_string()),
                ack: Ack::Success,
                retry_window: crate::sandbox::callbacks::STRIPE_RETRY_WINDOW,
                sign: Box::new(move |body| {
                    let t = now();
                    let signed = [format!("{t}.").as_bytes(), body].concat();
                    let v1 = crypto::hex(&crypto::hmac_sha256(secret.as_bytes(), &signed));
                    vec![
                        ("Stripe-Signature".into(), format!("t={t},v1={v1}")),
                        ("Content-Type".into(), "application/json; charset=utf-8".into()),
                        ("User-Agent".into(), "Stripe/1.0 (+https://stripe.com/docs/webhooks)".into()),
                    ]
                }),
            });
        }
    }

    // ---- payer actions (3-D Secure) -------------------------------------------------------

    /// Completes (`success`) or fails the 3-D Secure challenge of a `requires_action` intent.
    /// Returns the intent and its `return_url`.
    fn finish_authentication(&self, id: &str, success: bool) -> Result<(Value, Option<String>), ActionError> {
        let mut ctx = Ctx { request_id: None, idempotency_key: None, events: Vec::new() };
        let result = {
            let mut st = self.lock();
            let pi = st.intents.get_mut(id).ok_or_else(|| ActionError::NotFound(format!("no payment_intent {id}")))?;
            if pi.status != PiStatus::RequiresAction {
                return Err(ActionError::Conflict(format!(
                    "payment_intent {id} is {}, not requires_action",
                    pi.status.as_str()
                )));
            }
            if success {
                // A decline after authentication is still a finished challenge.
                let _ = self.confirm(&mut st, &mut ctx, id, true, false);
            } else {
                pi.status = PiStatus::RequiresPaymentMethod;
                pi.next_action = None;
                pi.last_payment_error = Some(json!({
                    "code": "payment_intent_authentication_failure",
                    "doc_url": "https://stripe.com/docs/error-codes/payment-intent-authentication-failure",
                    "message": "The provided PaymentMethod has failed authentication. You can provide \
                payment_method_data or a new PaymentMethod to attempt to fulfill this PaymentIntent again.",
                    "payment_method": {"id": pi.payment_method},
                    "type": "invalid_request_error",
                }));
                ctx.event("payment_intent.payment_failed", intent_json(pi));
            }
            let pi = st.intents.get(id).ok_or_else(|| ActionError::NotFound(format!("no payment_intent {id}")))?;
            (intent_json(pi), pi.return_url.clone())
        };
        self.emit(ctx);
        Ok(result)
    }

    fn page(&self, req: &Request) -> Option<Response> {
        if req.method == http::Method::GET {
            let ids = match_path("/pay/:id", &req.path)?;
            return Some(self.challenge_page(first(&ids)));
        }
        if req.method == http::Method::POST {
            let ids = match_path("/pay/:id/:action", &req.path)?;
            return Some(self.challenge_answer(first(&ids), ids.get(1).map(String::as_str).unwrap_or("")));
        }
        None
    }

    fn challenge_page(&self, id: &str) -> Response {
        let st = self.lock();
        let Some(pi) = st.intents.get(id) else {
            let mut r = pages::page("Unknown payment", &[("PaymentIntent", id.to_string())], &[]);
            r.status = 404;
            return r;
        };
        let card = pi.payment_method.as_ref().and_then(|m| st.methods.get(m)).map(|m| m.card);
        let rows = [
            ("PaymentIntent", pi.id.clone()),
            ("Amount", major(&pi.currency, pi.amount)),
            ("Card", card.map(|c| format!("{} •••• {}", c.brand, c.last4)).unwrap_or_default()),
            ("Status", pi.status.as_str().to_string()),
        ];
        let actions = if pi.status == PiStatus::RequiresAction {
            vec![
                ("Complete authentication", format!("/pay/{id}/authenticate")),
                ("Fail authentication", format!("/pay/{id}/fail")),
            ]
        } else {
            vec![]
        };
        pages::page("3D Secure 2 test page", &rows, &actions)
    }

    fn challenge_answer(&self, id: &str, action: &str) -> Response {
        let success = match action {
            "authenticate" => true,
            "fail" => false,
            _ => return Response::new(404).body("unknown action"),
        };
        match self.finish_authentication(id, success) {
            Ok((pi, Some(return_url))) => {
                let status = if matches!(pi["status"].as_str(), Some("succeeded" | "requires_capture")) {
                    "succeeded"
                } else {
                    "failed"
                };
                Response::redirect(&pages::with_query(
                    &return_url,
                    &[
                        ("payment_intent", id),
                        ("payment_intent_client_secret", pi["client_secret"].as_str().unwrap_or("")),
                        ("redirect_status", status),
                    ],
                ))
            }
            Ok((pi, None)) => pages::page(
                "Authentication finished",
                &[("PaymentIntent", id.to_string()), ("Status", pi["status"].as_str().unwrap_or("").to_string())],
                &[],
            ),
            Err(e) => pages::page("Cannot authenticate", &[("Reason", e.to_string())], &[]),
        }
    }
}

/// A stored response replayed for a repeated Idempotency-Key.
fn replayed(r: Response, rid: &str) -> Response {
    let original = r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("Request-Id")).map(|(_, v)| v.clone());
    let r = r.header("Request-Id", rid).header("Idempotent-Replayed", "true");
    match original {
        Some(o) => r.header("Original-Request", o),
        None => r,
    }
}

#[async_trait::async_trait]
impl Simulator for StripeSim {
    async fn serve(&self, req: Request, gate: &FaultGate) -> Reply {
        tracing::debug!(instance = %self.setup.name, method = %req.method, path = %req.path, "sandbox request");
        if let Some(page) = self.page(&req) {
            return respond(page);
        }
        let rid = new_id("req");
        match self.api(&req, &rid, gate).await {
            Reply::Respond(mut r) => {
                if !r.has_header("Request-Id") {
                    r = r.header("Request-Id", rid.as_str());
                }
                r = r.header("Stripe-Version", req.header("stripe-version").unwrap_or(API_VERSION));
                if let Some(k) = req.header("idempotency-key").filter(|_| req.method == http::Method::POST) {
                    r = r.header("Idempotency-Key", k);
                }
                respond(r.header("Cache-Control", "no-cache, no-store"))
            }
            blackhole => blackhole,
        }
    }

    fn payments(&self) -> Vec<Value> {
        let st = self.lock();
        st.order
            .iter()
            .filter_map(|id| st.intents.get(id))
            .map(|pi| {
                json!({
                    "id": pi.id,
                    "status": pi.status.as_str(),
                    "amount": pi.amount,
                    "currency": pi.currency,
                    "reference": pi.metadata.get("paymux_attempt"),
                    "created": pi.created,
                    "amount_received": pi.amount_received,
                    "amount_refunded": pi.amount_refunded,
                    "payment_method": pi.payment_method,
                    "decline_code": pi.last_payment_error.as_ref().and_then(|e| e.get("decline_code").or_else(|| e.get("code"))),
                    "metadata": pi.metadata,
                })
            })
            .collect()
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn payer_action(&self, collection: &str, id: &str, action: &str, _body: &[u8]) -> Result<Value, ActionError> {
        match (collection, action) {
            ("payment_intents", "authenticate") => self.finish_authentication(id, true).map(|(v, _)| v),
            ("payment_intents", "fail") => self.finish_authentication(id, false).map(|(v, _)| v),
            _ => Err(ActionError::NotFound(format!(
                "Stripe payer actions are payment_intents/{{id}}/authenticate and payment_intents/{{id}}/fail, not {collection}/{{id}}/{action}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keys_like_stripe() {
        assert_eq!(mask_key("sk_test_paymux_sandbox_primary"), "sk_test_******************mary");
        assert_eq!(mask_key("short"), "*****");
    }
}
