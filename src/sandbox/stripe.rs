//! Stripe simulator, compatible with the official SDKs pointed at it (`stripe.api_base`):
//! PaymentIntents (create, confirm, capture, cancel, retrieve, list, search), Refunds, Charges
//! and PaymentMethods (retrieve); Bearer auth; `Idempotency-Key` replay; test cards
//! (`stripe_cards.rs`) including declines and 3-D Secure with a challenge page on the
//! simulator's port; webhooks signed `t=<unix>,v1=<hmac>`.
//!
//! Request pipeline: auth → route → params → idempotency → fault gate → handler. Handlers are
//! plain functions over the locked state; the events they record are sent after the lock is
//! released.

use super::callbacks::{Ack, Callback, Dispatcher};
use super::faults::{FaultGate, Op};
use super::form::{self, Params};
use super::http::{match_path, Reply, Request, Response};
use super::idempotency::{Begin, IdempotencyStore};
use super::pages;
use super::sim::{ActionError, Simulator, Stats};
use super::stripe_cards::{self, Behaviour};
use super::stripe_model::{
    charge_json, decline_error, intent_json, payment_method_json, refund_json, ApiError, Charge, Intent,
    PaymentMethod, PiStatus, Refund,
};
use super::stripe_search::{self, Clause};
use crate::connector::stripe::API_VERSION;
use crate::crypto;
use crate::domain::{new_id, Currency};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
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
    intents: HashMap<String, Intent>,
    /// PaymentIntent ids in creation order.
    order: Vec<String>,
    charges: HashMap<String, Charge>,
    refunds: HashMap<String, Refund>,
    methods: HashMap<String, PaymentMethod>,
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
    Route { method: "POST", pattern: "/v1/payment_intents/:id/confirm", op: Op::Create, run: StripeSim::confirm_intent },
    Route { method: "POST", pattern: "/v1/payment_intents/:id/capture", op: Op::Capture, run: StripeSim::capture_intent },
    Route { method: "POST", pattern: "/v1/payment_intents/:id/cancel", op: Op::Cancel, run: StripeSim::cancel_intent },
    Route { method: "POST", pattern: "/v1/refunds", op: Op::Refund, run: StripeSim::create_refund },
    Route { method: "GET", pattern: "/v1/refunds/:id", op: Op::Query, run: StripeSim::retrieve_refund },
    Route { method: "GET", pattern: "/v1/charges/:id", op: Op::Query, run: StripeSim::retrieve_charge },
    Route { method: "GET", pattern: "/v1/payment_methods/:id", op: Op::Query, run: StripeSim::retrieve_payment_method },
];

const CREATE_PARAMS: &[&str] = &[
    "amount",
    "amount_details",
    "application_fee_amount",
    "automatic_payment_methods",
    "capture_method",
    "confirm",
    "confirmation_method",
    "confirmation_token",
    "currency",
    "customer",
    "description",
    "error_on_requires_action",
    "excluded_payment_method_types",
    "expand",
    "hooks",
    "mandate",
    "mandate_data",
    "metadata",
    "off_session",
    "on_behalf_of",
    "payment_details",
    "payment_method",
    "payment_method_configuration",
    "payment_method_data",
    "payment_method_options",
    "payment_method_types",
    "radar_options",
    "receipt_email",
    "return_url",
    "setup_future_usage",
    "shipping",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "transfer_data",
    "transfer_group",
    "use_stripe_sdk",
];

const CONFIRM_PARAMS: &[&str] = &[
    "capture_method",
    "confirmation_token",
    "error_on_requires_action",
    "expand",
    "mandate",
    "mandate_data",
    "off_session",
    "payment_details",
    "payment_method",
    "payment_method_data",
    "payment_method_options",
    "payment_method_types",
    "radar_options",
    "receipt_email",
    "return_url",
    "setup_future_usage",
    "shipping",
    "use_stripe_sdk",
];

const REFUND_PARAMS: &[&str] = &[
    "amount",
    "charge",
    "currency",
    "customer",
    "expand",
    "instructions_email",
    "metadata",
    "origin",
    "payment_intent",
    "reason",
    "refund_application_fee",
    "reverse_transfer",
];

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn respond(r: Response) -> Reply {
    Reply::Respond(r)
}

// ---- parameter readers -------------------------------------------------------------------

/// A scalar parameter; a hash or list where a string belongs is an error.
fn scalar<'a>(p: &'a Params, name: &str) -> Result<Option<&'a str>, ApiError> {
    match p.get(&[name]) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(format!("Invalid string: {name} must be a string"), Some(name), None)),
    }
}

fn allow(p: &Params, allowed: &[&str]) -> Result<(), ApiError> {
    match p.unknown(allowed) {
        Some(k) => Err(ApiError::unknown(k)),
        None => Ok(()),
    }
}

fn amount_param(p: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(s) = scalar(p, name)? else { return Ok(None) };
    let n: i64 = s
        .parse()
        .map_err(|_| ApiError::invalid(format!("Invalid integer: {s}"), Some(name), Some("parameter_invalid_integer")))?;
    if n < 1 {
        return Err(ApiError::invalid(
            "This value must be greater than or equal to 1.",
            Some(name),
            Some("parameter_invalid_integer"),
        ));
    }
    if n > 99_999_999 {
        return Err(ApiError::invalid(
            "Amount must be no more than 99999999 in the smallest currency unit.",
            Some(name),
            Some("amount_too_large"),
        ));
    }
    Ok(Some(n))
}

fn currency_param(p: &Params) -> Result<String, ApiError> {
    let s = scalar(p, "currency")?.ok_or_else(|| ApiError::missing("currency"))?;
    let known = s.len() == 3
        && s.bytes().all(|b| b.is_ascii_lowercase())
        && Currency::parse(&s.to_ascii_uppercase()).is_ok();
    if known {
        return Ok(s.to_string());
    }
    let all: Vec<String> = Currency::all().map(|c| c.code().to_ascii_lowercase()).collect();
    Err(ApiError::invalid(
        format!("Invalid currency: {s}. Stripe currently supports these currencies: {}", all.join(", ")),
        Some("currency"),
        None,
    ))
}

fn bool_param(p: &Params, name: &str) -> Result<Option<bool>, ApiError> {
    match scalar(p, name)? {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(s) => Err(ApiError::invalid(format!("Invalid boolean: {s}"), Some(name), None)),
    }
}

fn one_of(p: &Params, name: &str, allowed: &[&str]) -> Result<Option<String>, ApiError> {
    match scalar(p, name)? {
        None => Ok(None),
        Some(s) if allowed.contains(&s) => Ok(Some(s.to_string())),
        Some(_) => {
            let (last, rest) = allowed.split_last().unwrap_or((&"", &[]));
            Err(ApiError::invalid(
                format!("Invalid {name}: must be one of {}, or {last}", rest.join(", ")),
                Some(name),
                None,
            ))
        }
    }
}

fn metadata_param(p: &Params) -> Result<BTreeMap<String, String>, ApiError> {
    let pairs = p.hash("metadata").map_err(|m| ApiError::invalid(m, Some("metadata"), None))?.unwrap_or_default();
    let mut out = BTreeMap::new();
    for (k, v) in pairs.into_iter().filter(|(_, v)| !v.is_empty()) {
        if k.chars().count() > 40 || v.chars().count() > 500 {
            return Err(ApiError::invalid(
                "Metadata keys can be up to 40 characters long and values up to 500 characters long.",
                Some(&format!("metadata[{k}]")),
                None,
            ));
        }
        out.insert(k, v);
    }
    if out.len() > 50 {
        return Err(ApiError::invalid("You can have up to 50 metadata keys.", Some("metadata"), None));
    }
    Ok(out)
}

fn three_ds_param(p: &Params) -> Result<Option<String>, ApiError> {
    const NAME: &str = "payment_method_options[card][request_three_d_secure]";
    match p.get(&["payment_method_options", "card", "request_three_d_secure"]) {
        None => Ok(None),
        Some(Value::String(s)) if ["automatic", "any", "challenge"].contains(&s.as_str()) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(
            format!("Invalid {NAME}: must be one of automatic, any, or challenge"),
            Some(NAME),
            None,
        )),
    }
}

fn payment_method_types(p: &Params) -> Result<Option<Vec<String>>, ApiError> {
    let types =
        p.list("payment_method_types").map_err(|m| ApiError::invalid(m, Some("payment_method_types"), None))?;
    if let Some(t) = types.as_ref().and_then(|t| t.iter().find(|t| t.as_str() != "card")) {
        return Err(ApiError::invalid(
            format!("The payment method type \"{t}\" is invalid. The sandbox simulates card payments only."),
            Some("payment_method_types"),
            Some("payment_method_invalid_parameter"),
        ));
    }
    Ok(types)
}

fn intent_in<'a>(st: &'a State, id: &str) -> Result<&'a Intent, ApiError> {
    st.intents.get(id).ok_or_else(|| ApiError::no_such("payment_intent", id, "intent"))
}

fn intent_mut<'a>(st: &'a mut State, id: &str) -> Result<&'a mut Intent, ApiError> {
    st.intents.get_mut(id).ok_or_else(|| ApiError::no_such("payment_intent", id, "intent"))
}

fn first(ids: &[String]) -> &str {
    ids.first().map(String::as_str).unwrap_or("")
}

fn major(currency: &str, minor: i64) -> String {
    let code = currency.to_ascii_uppercase();
    match Currency::parse(&code) {
        Ok(c) => format!("{code} {}", c.format_major(minor)),
        Err(_) => format!("{minor} {currency}"),
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
            let fingerprint = crypto::sha256_hex(&[method.as_bytes(), b" ", req.path.as_bytes(), b"\n", &req.body].concat());
            match self.idempotency.begin(k, &fingerprint) {
                Begin::New => {}
                Begin::Replay(r) => return respond(replayed(r, rid)),
                Begin::Mismatch => {
                    return respond(ApiError::idempotency(400, "idempotency_key_in_use", format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. \
Try using a key other than '{k}' if you meant to execute a different request."
                    )).response(rid))
                }
                Begin::InFlight => {
                    return respond(ApiError::idempotency(409, "idempotency_key_in_use", format!(
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
            (route.run)(self, &mut st, &mut ctx, p, ids)
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

    // ---- payment methods and confirmation ----------------------------------------------

    /// Resolves `payment_method` or `payment_method_data[card][token]` to a stored method.
    fn resolve_payment_method(&self, st: &mut State, p: &Params) -> Result<Option<String>, ApiError> {
        if let Some(id) = scalar(p, "payment_method")? {
            return attach(st, id, "payment_method").map(Some);
        }
        if p.get(&["payment_method_data"]).is_none() {
            return Ok(None);
        }
        match p.str(&["payment_method_data", "type"]) {
            Some("card") => {}
            Some(t) => {
                return Err(ApiError::invalid(
                    format!("The payment method type \"{t}\" is invalid. The sandbox simulates card payments only."),
                    Some("payment_method_data[type]"),
                    Some("payment_method_invalid_parameter"),
                ))
            }
            None => return Err(ApiError::missing("payment_method_data[type]")),
        }
        let token = p
            .str(&["payment_method_data", "card", "token"])
            .ok_or_else(|| ApiError::missing("payment_method_data[card][token]"))?;
        attach(st, token, "payment_method_data[card][token]").map(Some)
    }

    /// Confirms intent `id` with its payment method. `authenticated`: 3-D Secure is done.
    fn confirm(&self, st: &mut State, ctx: &mut Ctx<'_>, id: &str, authenticated: bool) -> Result<(), ApiError> {
        let State { intents, charges, methods, .. } = st;
        let pi = intents.get_mut(id).ok_or_else(|| ApiError::no_such("payment_intent", id, "intent"))?;
        let pm_id = pi.payment_method.clone().unwrap_or_default();
        let pm = methods.get(&pm_id).ok_or_else(|| ApiError::state("The PaymentIntent has no payment method."))?;
        pi.last_payment_error = None;
        pi.next_action = None;
        let wants_3ds = matches!(pm.card.behaviour, Behaviour::Authenticate)
            || matches!(pi.request_three_d_secure.as_str(), "any" | "challenge");
        if wants_3ds && !authenticated {
            pi.status = PiStatus::RequiresAction;
            pi.next_action = Some(json!({
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "return_url": pi.return_url,
                    "url": format!("{}/pay/{}", self.setup.base_url, pi.id),
                },
            }));
            ctx.event("payment_intent.requires_action", intent_json(pi));
            return Ok(());
        }
        let manual = pi.capture_method == "manual";
        let decline = match &pm.card.behaviour {
            Behaviour::Decline(d) => Some(d),
            _ => None,
        };
        let ch = Charge {
            id: new_id("ch"),
            payment_intent: pi.id.clone(),
            amount: pi.amount,
            currency: pi.currency.clone(),
            created: now(),
            payment_method: pm.id.clone(),
            card: pm.card,
            failure: decline,
            captured: decline.is_none() && !manual,
            amount_captured: if decline.is_none() && !manual { pi.amount } else { 0 },
            amount_refunded: 0,
            three_d_secure: authenticated,
            balance_transaction: (decline.is_none() && !manual).then(|| new_id("txn")),
        };
        pi.latest_charge = Some(ch.id.clone());
        if let Some(d) = decline {
            let err = decline_error(d, &ch.id, pm);
            pi.status = PiStatus::RequiresPaymentMethod;
            pi.last_payment_error = Some(Value::Object(err.clone()));
            charges.insert(ch.id.clone(), ch);
            let pi_json = intent_json(pi);
            ctx.event("payment_intent.payment_failed", pi_json.clone());
            let mut err = err;
            err.insert("payment_intent".into(), pi_json);
            return Err(ApiError::card(err));
        }
        charges.insert(ch.id.clone(), ch);
        if manual {
            pi.status = PiStatus::RequiresCapture;
            pi.amount_capturable = pi.amount;
            ctx.event("payment_intent.amount_capturable_updated", intent_json(pi));
        } else {
            pi.status = PiStatus::Succeeded;
            pi.amount_received = pi.amount;
            Stats::bump(&self.stats.payments_succeeded);
            ctx.event("payment_intent.succeeded", intent_json(pi));
        }
        Ok(())
    }

    // ---- handlers ------------------------------------------------------------------------

    fn create_intent(&self, st: &mut State, ctx: &mut Ctx<'_>, p: &Params, _: &[String]) -> Result<Value, ApiError> {
        allow(p, CREATE_PARAMS)?;
        let amount = amount_param(p, "amount")?.ok_or_else(|| ApiError::missing("amount"))?;
        let currency = currency_param(p)?;
        let metadata = metadata_param(p)?;
        let capture_method = one_of(p, "capture_method", &["automatic", "automatic_async", "manual"])?;
        let confirmation_method = one_of(p, "confirmation_method", &["automatic", "manual"])?;
        let confirm = bool_param(p, "confirm")?.unwrap_or(false);
        let types = payment_method_types(p)?;
        let three_ds = three_ds_param(p)?;
        let setup_future_usage = one_of(p, "setup_future_usage", &["off_session", "on_session"])?;
        let s = |name: &str| scalar(p, name).map(|v| v.map(String::from));
        let (return_url, description, receipt_email) = (s("return_url")?, s("description")?, s("receipt_email")?);
        let (customer, descriptor, suffix) =
            (s("customer")?, s("statement_descriptor")?, s("statement_descriptor_suffix")?);
        let payment_method = self.resolve_payment_method(st, p)?;
        if confirm && payment_method.is_none() {
            return Err(ApiError::state(
                "You cannot confirm this PaymentIntent because it's missing a payment method. You can either \
update the PaymentIntent with a payment method and then confirm it again, or confirm it again directly with a \
payment method or ConfirmationToken.",
            ));
        }
        let id = new_id("pi");
        let pi = Intent {
            client_secret: format!("{id}_secret_{}", new_id("s").trim_start_matches("s_")),
            id: id.clone(),
            amount,
            currency,
            status: if payment_method.is_some() {
                PiStatus::RequiresConfirmation
            } else {
                PiStatus::RequiresPaymentMethod
            },
            capture_method: capture_method.unwrap_or_else(|| "automatic_async".into()),
            confirmation_method: confirmation_method.unwrap_or_else(|| "automatic".into()),
            created: now(),
            metadata,
            description,
            receipt_email,
            customer,
            payment_method,
            payment_method_types: types.unwrap_or_else(|| vec!["card".into()]),
            return_url,
            request_three_d_secure: three_ds.unwrap_or_else(|| "automatic".into()),
            setup_future_usage,
            statement_descriptor: descriptor,
            statement_descriptor_suffix: suffix,
            last_payment_error: None,
            next_action: None,
            latest_charge: None,
            amount_received: 0,
            amount_capturable: 0,
            canceled_at: None,
            cancellation_reason: None,
            amount_refunded: 0,
        };
        st.intents.insert(id.clone(), pi);
        st.order.push(id.clone());
        Stats::bump(&self.stats.payments_created);
        if confirm {
            self.confirm(st, ctx, &id, false)?;
        }
        intent_in(st, &id).map(intent_json)
    }

    fn confirm_intent(&self, st: &mut State, ctx: &mut Ctx<'_>, p: &Params, ids: &[String]) -> Result<Value, ApiError> {
        allow(p, CONFIRM_PARAMS)?;
        let id = first(ids);
        let status = intent_in(st, id)?.status;
        if !matches!(status, PiStatus::RequiresPaymentMethod | PiStatus::RequiresConfirmation | PiStatus::RequiresAction)
        {
            return Err(ApiError::state(format!(
                "You cannot confirm this PaymentIntent because it has a status of {}. Only a PaymentIntent with one \
of the following statuses may be confirmed: requires_confirmation, requires_payment_method, requires_action.",
                status.as_str()
            )));
        }
        let capture_method = one_of(p, "capture_method", &["automatic", "automatic_async", "manual"])?;
        let three_ds = three_ds_param(p)?;
        payment_method_types(p)?;
        let return_url = scalar(p, "return_url")?.map(String::from);
        let receipt_email = scalar(p, "receipt_email")?.map(String::from);
        let payment_method = self.resolve_payment_method(st, p)?;
        let pi = intent_mut(st, id)?;
        if payment_method.is_some() {
            pi.payment_method = payment_method;
        }
        if pi.payment_method.is_none() {
            return Err(ApiError::state(
                "You cannot confirm this PaymentIntent because it's missing a payment method. You can either \
update the PaymentIntent with a payment method and then confirm it again, or confirm it again directly with a \
payment method or ConfirmationToken.",
            ));
        }
        pi.capture_method = capture_method.unwrap_or_else(|| pi.capture_method.clone());
        pi.request_three_d_secure = three_ds.unwrap_or_else(|| pi.request_three_d_secure.clone());
        pi.return_url = return_url.or_else(|| pi.return_url.clone());
        pi.receipt_email = receipt_email.or_else(|| pi.receipt_email.clone());
        self.confirm(st, ctx, id, false)?;
        intent_in(st, id).map(intent_json)
    }

    fn capture_intent(&self, st: &mut State, ctx: &mut Ctx<'_>, p: &Params, ids: &[String]) -> Result<Value, ApiError> {
        allow(p, &["amount_to_capture", "expand", "final_capture", "statement_descriptor", "statement_descriptor_suffix"])?;
        let id = first(ids);
        let amount = amount_param(p, "amount_to_capture")?;
        let State { intents, charges, .. } = st;
        let pi = intents.get_mut(id).ok_or_else(|| ApiError::no_such("payment_intent", id, "intent"))?;
        if pi.status != PiStatus::RequiresCapture {
            return Err(ApiError::state(format!(
                "This PaymentIntent could not be captured because it has a status of {}. Only a PaymentIntent with \
one of the following statuses may be captured: requires_capture.",
                pi.status.as_str()
            )));
        }
        let amount = amount.unwrap_or(pi.amount_capturable);
        if amount > pi.amount_capturable {
            return Err(ApiError::invalid(
                format!(
                    "The amount to capture ({}) is greater than the amount capturable ({}).",
                    major(&pi.currency, amount),
                    major(&pi.currency, pi.amount_capturable)
                ),
                Some("amount_to_capture"),
                Some("amount_too_large"),
            ));
        }
        if let Some(ch) = pi.latest_charge.as_ref().and_then(|c| charges.get_mut(c)) {
            ch.captured = true;
            ch.amount_captured = amount;
            ch.balance_transaction = Some(new_id("txn"));
        }
        pi.status = PiStatus::Succeeded;
        pi.amount_received = amount;
        pi.amount_capturable = 0;
        Stats::bump(&self.stats.payments_succeeded);
        let v = intent_json(pi);
        ctx.event("payment_intent.succeeded", v.clone());
        Ok(v)
    }

    fn cancel_intent(&self, st: &mut State, ctx: &mut Ctx<'_>, p: &Params, ids: &[String]) -> Result<Value, ApiError> {
        allow(p, &["cancellation_reason", "expand"])?;
        let reason =
            one_of(p, "cancellation_reason", &["abandoned", "duplicate", "fraudulent", "requested_by_customer"])?;
        let pi = intent_mut(st, first(ids))?;
        if !matches!(
            pi.status,
            PiStatus::RequiresPaymentMethod
                | PiStatus::RequiresCapture
                | PiStatus::RequiresConfirmation
                | PiStatus::RequiresAction
        ) {
            return Err(ApiError::state(format!(
                "You cannot cancel this PaymentIntent because it has a status of {}. Only a PaymentIntent with one \
of the following statuses may be canceled: requires_payment_method, requires_capture, requires_confirmation, \
requires_action, processing.",
                pi.status.as_str()
            )));
        }
        pi.status = PiStatus::Canceled;
        pi.canceled_at = Some(now());
        pi.cancellation_reason = reason;
        pi.next_action = None;
        pi.amount_capturable = 0;
        let v = intent_json(pi);
        ctx.event("payment_intent.canceled", v.clone());
        Ok(v)
    }

    fn retrieve_intent(&self, st: &mut State, _: &mut Ctx<'_>, p: &Params, ids: &[String]) -> Result<Value, ApiError> {
        allow(p, &["client_secret", "expand"])?;
        intent_in(st, first(ids)).map(intent_json)
    }

    fn list_intents(&self, st: &mut State, _: &mut Ctx<'_>, p: &Params, _: &[String]) -> Result<Value, ApiError> {
        allow(p, &["limit", "expand", "starting_after", "ending_before", "customer", "created"])?;
        let limit = limit_param(p)?;
        let all: Vec<&Intent> = st.order.iter().rev().filter_map(|id| st.intents.get(id)).collect();
        let start = match scalar(p, "starting_after")? {
            Some(after) => all.iter().position(|pi| pi.id == after).map(|i| i + 1).unwrap_or(all.len()),
            None => 0,
        };
        let page: Vec<Value> = all.iter().skip(start).take(limit).map(|pi| intent_json(pi)).collect();
        Ok(json!({
            "object": "list",
            "data": page,
            "has_more": all.len() > start + limit,
            "url": "/v1/payment_intents",
        }))
    }

    fn search_intents(&self, st: &mut State, _: &mut Ctx<'_>, p: &Params, _: &[String]) -> Result<Value, ApiError> {
        allow(p, &["query", "limit", "page", "expand"])?;
        let query = scalar(p, "query")?.ok_or_else(|| ApiError::missing("query"))?;
        let clauses = stripe_search::parse(query)
            .map_err(|m| ApiError::invalid(format!("Invalid query: {m}"), Some("query"), None))?;
        let limit = limit_param(p)?;
        let offset = match scalar(p, "page")? {
            Some(s) => s.parse::<usize>().map_err(|_| ApiError::invalid("Invalid page token.", Some("page"), None))?,
            None => 0,
        };
        let hits: Vec<&Intent> = st
            .order
            .iter()
            .rev()
            .filter_map(|id| st.intents.get(id))
            .filter(|pi| clauses.iter().all(|c| matches(pi, c)))
            .collect();
        let page: Vec<Value> = hits.iter().skip(offset).take(limit).map(|pi| intent_json(pi)).collect();
        let has_more = hits.len() > offset + limit;
        Ok(json!({
            "object": "search_result",
            "data": page,
            "has_more": has_more,
            "next_page": if has_more { json!((offset + limit).to_string()) } else { Value::Null },
            "url": "/v1/payment_intents/search",
        }))
    }

    fn create_refund(&self, st: &mut State, ctx: &mut Ctx<'_>, p: &Params, _: &[String]) -> Result<Value, ApiError> {
        allow(p, REFUND_PARAMS)?;
        let amount = amount_param(p, "amount")?;
        let reason = one_of(p, "reason", &["duplicate", "fraudulent", "requested_by_customer"])?;
        let metadata = metadata_param(p)?;
        let pi_id = match (scalar(p, "payment_intent")?, scalar(p, "charge")?) {
            (Some(pi), _) => pi.to_string(),
            (None, Some(ch)) => st
                .charges
                .get(ch)
                .map(|c| c.payment_intent.clone())
                .ok_or_else(|| ApiError::invalid(format!("No such charge: '{ch}'"), Some("charge"), Some("resource_missing")))?,
            (None, None) => {
                return Err(ApiError::invalid(
                    "One of the following params should be provided for this request: payment_intent or charge.",
                    None,
                    Some("parameter_missing"),
                ))
            }
        };
        let State { intents, charges, refunds, methods, .. } = st;
        let pi = intents.get_mut(&pi_id).ok_or_else(|| {
            ApiError::invalid(format!("No such payment_intent: '{pi_id}'"), Some("payment_intent"), Some("resource_missing"))
        })?;
        let charge_id = pi.latest_charge.clone().unwrap_or_default();
        if pi.status != PiStatus::Succeeded {
            return Err(ApiError::invalid(
                format!(
                    "This PaymentIntent ({pi_id}) does not have a successful charge to refund (status {}).",
                    pi.status.as_str()
                ),
                Some("payment_intent"),
                Some("payment_intent_unexpected_state"),
            ));
        }
        let remaining = pi.amount_received - pi.amount_refunded;
        if remaining <= 0 {
            return Err(ApiError::invalid(
                format!("Charge {charge_id} has already been refunded."),
                None,
                Some("charge_already_refunded"),
            ));
        }
        let amount = amount.unwrap_or(remaining);
        if amount > remaining {
            return Err(ApiError::invalid(
                format!(
                    "Refund amount ({}) is greater than unrefunded amount on charge ({})",
                    major(&pi.currency, amount),
                    major(&pi.currency, remaining)
                ),
                Some("amount"),
                Some("amount_too_large"),
            ));
        }
        pi.amount_refunded += amount;
        let mut refund = Refund {
            id: new_id("re"),
            amount,
            currency: pi.currency.clone(),
            created: now(),
            charge: charge_id.clone(),
            payment_intent: pi_id.clone(),
            reason,
            metadata,
            status: "succeeded",
            balance_transaction: new_id("txn"),
            reference: None,
        };
        Stats::bump(&self.stats.refunds);
        let created = refund_json(&refund);
        ctx.event("refund.created", created.clone());
        if let Some(ch) = charges.get_mut(&charge_id) {
            ch.amount_refunded += amount;
            if let Some(pm) = methods.get(&ch.payment_method) {
                ctx.event("charge.refunded", charge_json(ch, pi, pm));
            }
        }
        // The acquirer reference arrives "later": Stripe announces it with refund.updated.
        refund.reference = Some(format!("{:0>23}", refund.created));
        ctx.event("refund.updated", refund_json(&refund));
        refunds.insert(refund.id.clone(), refund);
        Ok(created)
    }

    fn retrieve_refund(&self, st: &mut State, _: &mut Ctx<'_>, p: &Params, ids: &[String]) -> Result<Value, ApiError> {
        allow(p, &["expand"])?;
        let id = first(ids);
        st.refunds.get(id).map(refund_json).ok_or_else(|| ApiError::no_such("refund", id, "id"))
    }

    fn retrieve_charge(&self, st: &mut State, _: &mut Ctx<'_>, p: &Params, ids: &[String]) -> Result<Value, ApiError> {
        allow(p, &["expand"])?;
        let id = first(ids);
        let ch = st.charges.get(id).ok_or_else(|| ApiError::no_such("charge", id, "id"))?;
        let pi = intent_in(st, &ch.payment_intent)?;
        let pm = st.methods.get(&ch.payment_method).ok_or_else(|| ApiError::no_such("charge", id, "id"))?;
        Ok(charge_json(ch, pi, pm))
    }

    fn retrieve_payment_method(
        &self,
        st: &mut State,
        _: &mut Ctx<'_>,
        p: &Params,
        ids: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, &["expand"])?;
        let id = first(ids);
        st.methods.get(id).map(payment_method_json).ok_or_else(|| ApiError::no_such("payment_method", id, "id"))
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
                let _ = self.confirm(&mut st, &mut ctx, id, true);
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

/// Stores the payment method a test id or token stands for and returns its `pm_` id.
fn attach(st: &mut State, id: &str, param: &str) -> Result<String, ApiError> {
    if st.methods.contains_key(id) {
        return Ok(id.to_string());
    }
    let (card, fresh) = match stripe_cards::lookup(id) {
        // Test ids and tokens become a new PaymentMethod, as in Stripe test mode.
        Some(card) => (card, true),
        // Wallet payment methods from Stripe.js are ordinary pm_ ids: a card that succeeds.
        None if id.starts_with("pm_") => (&stripe_cards::DEFAULT_CARD, false),
        None if id.starts_with("tok_") => {
            return Err(ApiError::invalid(format!("No such token: '{id}'"), Some(param), Some("resource_missing")))
        }
        None => {
            return Err(ApiError::invalid(format!("No such PaymentMethod: '{id}'"), Some(param), Some("resource_missing")))
        }
    };
    let pm_id = if fresh { new_id("pm") } else { id.to_string() };
    let fingerprint = crypto::sha256_hex(format!("{}{}", card.brand, card.last4).as_bytes())[..16].to_string();
    st.methods.insert(pm_id.clone(), PaymentMethod { id: pm_id.clone(), card, created: now(), fingerprint });
    Ok(pm_id)
}

fn limit_param(p: &Params) -> Result<usize, ApiError> {
    match scalar(p, "limit")? {
        None => Ok(10),
        Some(s) => match s.parse::<usize>() {
            Ok(n @ 1..=100) => Ok(n),
            _ => Err(ApiError::invalid(
                "This value must be greater than or equal to 1 and less than or equal to 100.",
                Some("limit"),
                None,
            )),
        },
    }
}

fn matches(pi: &Intent, c: &Clause) -> bool {
    match c {
        Clause::Metadata(k, v) => pi.metadata.get(k) == Some(v),
        Clause::Field(f, v) => match f.as_str() {
            "status" => pi.status.as_str() == v,
            "currency" => pi.currency == *v,
            "customer" => pi.customer.as_deref() == Some(v),
            "amount" => pi.amount.to_string() == *v,
            _ => false,
        },
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

    #[test]
    fn attaches_test_ids_as_fresh_payment_methods() {
        let mut st = State::default();
        let a = attach(&mut st, "pm_card_visa", "payment_method").unwrap();
        assert!(a.starts_with("pm_") && a != "pm_card_visa");
        assert_eq!(attach(&mut st, &a, "payment_method").unwrap(), a, "an attached method is reused");
        assert_eq!(attach(&mut st, "pm_1WalletToken", "payment_method").unwrap(), "pm_1WalletToken");
        let e = attach(&mut st, "tok_nope", "x").unwrap_err();
        assert_eq!(e.error["code"], "resource_missing");
        assert!(attach(&mut st, "card_123", "x").is_err());
    }

    #[test]
    fn parameter_checks_match_stripe() {
        let p = form::parse(b"amount=-5&currency=HKD&confirm=yes&capture_method=later").unwrap();
        assert_eq!(amount_param(&p, "amount").unwrap_err().error["code"], "parameter_invalid_integer");
        assert_eq!(currency_param(&p).unwrap_err().error["param"], "currency");
        assert!(bool_param(&p, "confirm").is_err());
        let e = one_of(&p, "capture_method", &["automatic", "automatic_async", "manual"]).unwrap_err();
        assert_eq!(e.error["message"], "Invalid capture_method: must be one of automatic, automatic_async, or manual");
        let p = form::parse(b"amount=100000000&currency=hkd").unwrap();
        assert_eq!(amount_param(&p, "amount").unwrap_err().error["code"], "amount_too_large");
        assert_eq!(currency_param(&p).unwrap(), "hkd");
        let p = form::parse(b"amount[x]=1").unwrap();
        assert!(amount_param(&p, "amount").is_err());
        assert_eq!(ApiError::unknown("foo").error["code"], "parameter_unknown");
    }
}
