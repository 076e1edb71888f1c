//! Stripe-compatible PSP connector: PaymentIntents (cards and wallet tokens), Refunds,
//! `Stripe-Signature` webhooks. Carries Visa, MasterCard, Apple Pay and Google Pay tokens.
//!
//! Wire facts (checked against stripe-python 16.x): form-encoded bodies with bracket keys,
//! `Authorization: Bearer`, `Idempotency-Key` per POST, JSON responses tagged by `object`,
//! errors as `{"error": {type, code, decline_code, message, payment_intent}}`, webhooks signed
//! `t=<unix>,v1=<hex hmac_sha256(secret, "<t>.<body>")>`.

use super::*;
use crate::crypto;
use crate::domain::Secret;
use serde_json::Value;

/// Methods a Stripe-compatible PSP carries in this connector.
pub const METHODS: &[Method] = &[Method::Visa, Method::Mastercard, Method::ApplePay, Method::GooglePay];

/// API version pinned on every call, so the response shapes are the ones parsed here.
pub const API_VERSION: &str = "2026-10-28.endive";

/// A configured Stripe-compatible channel.
pub struct Stripe {
    api_key: Secret<String>,
    webhook_secret: Secret<String>,
    tolerance_secs: i64,
    search_consistency_ms: u64,
}

impl Stripe {
    /// Builds the connector from resolved secrets.
    pub fn new(
        api_key: Secret<String>,
        webhook_secret: Secret<String>,
        tolerance_secs: u32,
        search_consistency_ms: u32,
    ) -> Self {
        Stripe {
            api_key,
            webhook_secret,
            tolerance_secs: i64::from(tolerance_secs),
            search_consistency_ms: u64::from(search_consistency_ms),
        }
    }

    fn request(&self, method: http::Method, path: String, idem: Option<&str>, form: Option<String>) -> WireRequest {
        let mut headers = vec![
            ("authorization", format!("Bearer {}", self.api_key.expose())),
            ("stripe-version", API_VERSION.to_string()),
        ];
        if let Some(k) = idem {
            headers.push(("idempotency-key", k.to_string()));
        }
        if form.is_some() {
            headers.push(("content-type", "application/x-www-form-urlencoded".into()));
        }
        WireRequest { method, path, headers, body: form.map(Bytes::from).unwrap_or_default() }
    }
}

/// Maps a PaymentIntent JSON object to a provider payment.
/// The fields of a PaymentIntent this connector reads; the rest of the object (dozens of
/// fields) is skipped without building it.
#[derive(serde::Deserialize)]
struct Intent {
    id: String,
    status: String,
    #[serde(default)]
    last_payment_error: Option<Value>,
    #[serde(default)]
    next_action: Option<Value>,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    currency: Option<Value>,
}

/// The payment a PaymentIntent object describes.
pub fn payment_from_intent(pi: &Value) -> Option<ProviderPayment> {
    <Intent as serde::Deserialize>::deserialize(pi).ok().and_then(payment_from)
}

/// The same, read straight from a response body.
fn payment_from_body(body: &[u8]) -> Option<ProviderPayment> {
    serde_json::from_slice::<Intent>(body).ok().and_then(payment_from)
}

fn payment_from(pi: Intent) -> Option<ProviderPayment> {
    let state = match pi.status.as_str() {
        "succeeded" => ProviderState::Succeeded,
        "canceled" => ProviderState::Canceled,
        "requires_action" => ProviderState::RequiresAction,
        "processing" | "requires_capture" | "requires_confirmation" => ProviderState::Processing,
        "requires_payment_method" => match pi.last_payment_error.filter(|e| !e.is_null()) {
            Some(e) => ProviderState::Failed {
                code: e
                    .get("decline_code")
                    .or_else(|| e.get("code"))
                    .and_then(Value::as_str)
                    .unwrap_or("card_declined")
                    .to_string(),
                message: e.get("message").and_then(Value::as_str).unwrap_or("payment failed").to_string(),
            },
            None => ProviderState::Processing,
        },
        _ => return None,
    };
    let next_action = pi.next_action.filter(|n| !n.is_null()).map(|n| {
        match n.pointer("/redirect_to_url/url").and_then(Value::as_str) {
            Some(url) => serde_json::json!({"type": "redirect", "url": url}),
            None => serde_json::json!({"type": "redirect", "provider_action": n.get("type").cloned().unwrap_or(Value::Null)}),
        }
    });
    // An amount stated but unreadable (a fraction of a krona) is no answer, not "no amount".
    let money = stated_money_of(pi.amount, pi.currency.as_ref()).ok()?;
    Some(ProviderPayment { provider_ref: pi.id, state, next_action, money })
}

/// Stripe's `amount` for `m`. Stripe counts in ISO 4217 minor units but for two currencies,
/// and charges some only in steps: ISK, which ISO has without decimals, Stripe keeps with
/// two (100 = 1 króna); MGA, which ISO gives two decimals, Stripe has none (whole ariary
/// only); three-decimal currencies (BHD, JOD, KWD, OMR, TND) in multiples of 10.
fn stripe_amount(m: Money) -> Result<i64, BuildError> {
    let (minor, currency) = (m.minor(), m.currency());
    let code = currency.code();
    let step = |what: &str| BuildError {
        code: "amount_not_chargeable",
        message: format!("Stripe channels take {code} amounts in {what}"),
        field: Some("amount"),
    };
    match code {
        "ISK" => minor.checked_mul(100).ok_or_else(|| step("at most 10^15 minor units")),
        "MGA" if minor % 100 != 0 => Err(step("whole ariary (multiples of 100 minor units)")),
        "MGA" => Ok(minor / 100),
        _ if currency.exponent() == 3 && minor % 10 != 0 => Err(step("multiples of 10 minor units")),
        _ => Ok(minor),
    }
}

/// The money a Stripe object states, its `amount` read back into ISO 4217 minor units (see
/// [`stripe_amount`]).
fn stated_money_of(amount: Option<i64>, currency: Option<&Value>) -> Result<Option<Money>, WebhookError> {
    let code = currency.and_then(Value::as_str).map(str::to_ascii_uppercase);
    let minor = match (amount, code.as_deref()) {
        (Some(a), Some("ISK")) if a % 100 != 0 => {
            return Err(WebhookError::Malformed("an ISK amount in fractions of a króna".into()))
        }
        (Some(a), Some("ISK")) => Some(a / 100),
        (Some(a), Some("MGA")) => {
            Some(a.checked_mul(100).ok_or_else(|| WebhookError::Malformed("amount too large".into()))?)
        }
        (a, _) => a,
    };
    stated_money(minor, currency)
}

fn parse_json(resp: &WireResponse) -> Option<Value> {
    serde_json::from_slice(&resp.body).ok()
}

fn error_code(v: &Option<Value>) -> String {
    v.as_ref().and_then(|v| v.pointer("/error/code").and_then(Value::as_str)).unwrap_or("unknown").to_string()
}

/// Stripe's `error.message`, or `default` when the answer has none. Authentication errors
/// get a fixed text: Stripe's names the (masked) key, which is not the app's business.
fn error_message(status: u16, v: &Option<Value>, default: &str) -> String {
    if matches!(status, 401 | 403) {
        return "the provider refused paymux's credentials for this channel".into();
    }
    v.as_ref().and_then(|v| v.pointer("/error/message")).and_then(Value::as_str).unwrap_or(default).to_string()
}

fn encode(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The PSP token a card or wallet payment carries.
fn token<'r>(req: &CreateRequest<'r>) -> Result<&'r str, BuildError> {
    req.payment_method_data.and_then(|d| d.get("token")).and_then(Value::as_str).ok_or(BuildError {
        code: "payment_method_data_required",
        message: "a PSP token (`payment_method_data.token`) is required".into(),
        field: Some("payment_method_data.token"),
    })
}

impl Connector for Stripe {
    fn kind(&self) -> &'static str {
        "stripe"
    }

    fn check_create(&self, req: &CreateRequest<'_>) -> Result<(), BuildError> {
        token(req)?;
        // Stripe allows 50 metadata keys; paymux needs one (the attempt reference its status
        // queries search by), so the app's metadata may use the other 49 on this channel.
        if req.metadata.len() > 49 {
            return Err(BuildError {
                code: "metadata_too_large",
                message: "Stripe channels take at most 49 metadata keys (paymux uses one)".into(),
                field: Some("metadata"),
            });
        }
        stripe_amount(req.money).map(drop)
    }

    fn check_refund(&self, amount: Money) -> Result<(), BuildError> {
        stripe_amount(amount).map(drop)
    }

    fn build_create(&self, req: &CreateRequest<'_>) -> Result<WireRequest, BuildError> {
        self.check_create(req)?;
        let token = token(req)?;
        let mut p: Vec<(String, String)> = vec![
            ("amount".into(), stripe_amount(req.money)?.to_string()),
            ("currency".into(), req.money.currency().code().to_ascii_lowercase()),
            ("confirm".into(), "true".into()),
            ("payment_method_types[0]".into(), "card".into()),
        ];
        if token.starts_with("tok_") {
            p.push(("payment_method_data[type]".into(), "card".into()));
            p.push(("payment_method_data[card][token]".into(), token.into()));
        } else {
            p.push(("payment_method".into(), token.into()));
        }
        if let Some(u) = req.return_url {
            p.push(("return_url".into(), u.into()));
        }
        if let Some(e) = req.customer_email {
            p.push(("receipt_email".into(), e.into()));
        }
        for (k, v) in req.metadata {
            p.push((format!("metadata[{k}]"), v.clone()));
        }
        p.push(("description".into(), format!("Order {}", req.order_id)));
        p.push(("metadata[paymux_attempt]".into(), req.attempt_ref.into()));
        Ok(self.request(http::Method::POST, "/v1/payment_intents".into(), Some(req.attempt_ref), Some(encode(&p))))
    }

    fn parse_create(&self, _req: &WireRequest, resp: &WireResponse) -> CreateOutcome {
        // A success is read straight into the few fields used; other answers are small.
        if (200..=299).contains(&resp.status) {
            return match payment_from_body(&resp.body) {
                Some(p) => match p.state.clone() {
                    ProviderState::Failed { code, message } => {
                        CreateOutcome::Declined { provider_ref: Some(p.provider_ref), code, message }
                    }
                    _ => CreateOutcome::Accepted(p),
                },
                None => CreateOutcome::Ambiguous { code: "unparseable_response".into() },
            };
        }
        let v = parse_json(resp);
        match resp.status {
            402 => {
                let e = v.as_ref().and_then(|v| v.get("error"));
                let code = e
                    .and_then(|e| e.get("decline_code").or_else(|| e.get("code")))
                    .and_then(Value::as_str)
                    .unwrap_or("card_declined");
                let message = e.and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or("card declined");
                let pi = e.and_then(|e| e.pointer("/payment_intent/id")).and_then(Value::as_str);
                CreateOutcome::Declined {
                    provider_ref: pi.map(String::from),
                    code: code.into(),
                    message: message.into(),
                }
            }
            // A reused key with other parameters, or a key still in flight, says nothing about
            // whether the first request charged.
            409 => CreateOutcome::Ambiguous { code: format!("http_409_{}", error_code(&v)) },
            400 if v.as_ref().and_then(|v| v.pointer("/error/type")).and_then(Value::as_str)
                == Some("idempotency_error") =>
            {
                CreateOutcome::Ambiguous { code: "idempotency_error".into() }
            }
            // Rejected before processing: bad request, auth, permissions, rate limit.
            400..=499 => CreateOutcome::NotProcessed {
                code: format!("http_{}_{}", resp.status, error_code(&v)),
                message: error_message(resp.status, &v, "request rejected"),
            },
            _ => CreateOutcome::Ambiguous { code: format!("http_{}", resp.status) },
        }
    }

    fn build_query(&self, q: &QueryRef<'_>) -> Result<WireRequest, BuildError> {
        let path = match q.provider_ref {
            Some(id) => format!(
                "/v1/payment_intents/{}",
                percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
            ),
            None => {
                let query = format!("metadata['paymux_attempt']:'{}'", q.attempt_ref);
                format!("/v1/payment_intents/search?{}", encode(&[("query".into(), query)]))
            }
        };
        Ok(self.request(http::Method::GET, path, None, None))
    }

    fn parse_query(&self, q: &QueryRef<'_>, req: &WireRequest, resp: &WireResponse) -> QueryOutcome {
        let v = parse_json(resp);
        match (resp.status, v) {
            (200, Some(v)) => {
                let obj = if v.get("object").and_then(Value::as_str) == Some("search_result") {
                    match v.get("data").and_then(Value::as_array).and_then(|d| d.first()) {
                        Some(pi) => pi.clone(),
                        None => {
                            return QueryOutcome::NotFound {
                                authoritative: q.since_send_ms >= self.search_consistency_ms,
                            }
                        }
                    }
                } else {
                    v
                };
                payment_from_intent(&obj)
                    .map(QueryOutcome::Found)
                    .unwrap_or(QueryOutcome::Unknown { code: "unparseable_response".into() })
            }
            // Only Stripe's own "no such payment_intent" on a retrieve by id is an answer; a
            // 404 on search (no search endpoint, a proxy's page) says nothing about the payment.
            (404, v)
                if !req.path.contains("/search")
                    && v.as_ref().and_then(|v| v.pointer("/error/code")).and_then(Value::as_str)
                        == Some("resource_missing") =>
            {
                QueryOutcome::NotFound { authoritative: true }
            }
            (s, _) => QueryOutcome::Unknown { code: format!("http_{s}") },
        }
    }

    fn build_cancel(&self, attempt_ref: &str, provider_ref: &str) -> Result<WireRequest, BuildError> {
        let path = format!(
            "/v1/payment_intents/{}/cancel",
            percent_encoding::utf8_percent_encode(provider_ref, percent_encoding::NON_ALPHANUMERIC)
        );
        Ok(self.request(http::Method::POST, path, Some(&format!("{attempt_ref}-cancel")), Some(String::new())))
    }

    fn parse_cancel(&self, _req: &WireRequest, resp: &WireResponse) -> CancelOutcome {
        let v = parse_json(resp);
        match resp.status {
            200 => match v.as_ref().and_then(payment_from_intent).map(|p| p.state) {
                Some(ProviderState::Canceled) => CancelOutcome::Canceled,
                _ => CancelOutcome::Unknown { code: "unexpected_state".into() },
            },
            400..=499 if resp.status != 409 && resp.status != 429 => {
                CancelOutcome::Refused { code: error_code(&v), message: error_message(resp.status, &v, "refused") }
            }
            s => CancelOutcome::Unknown { code: format!("http_{s}") },
        }
    }

    fn build_refund(&self, r: &RefundRequest<'_>) -> Result<WireRequest, BuildError> {
        let mut p = vec![
            ("payment_intent".to_string(), r.provider_ref.to_string()),
            ("amount".into(), stripe_amount(r.amount)?.to_string()),
            ("metadata[paymux_refund]".into(), r.refund_id.into()),
            ("metadata[paymux_payment]".into(), r.payment_id.into()),
        ];
        if let Some(reason) = r.reason {
            // Stripe only takes its own reason codes; anything else goes to metadata.
            if ["duplicate", "fraudulent", "requested_by_customer"].contains(&reason) {
                p.push(("reason".into(), reason.into()));
            } else {
                p.push(("metadata[reason]".into(), reason.into()));
            }
        }
        Ok(self.request(http::Method::POST, "/v1/refunds".into(), Some(r.refund_id), Some(encode(&p))))
    }

    fn parse_refund(&self, _req: &WireRequest, resp: &WireResponse) -> RefundOutcome {
        let v = parse_json(resp);
        match resp.status {
            200..=299 => {
                let Some(v) = v else { return RefundOutcome::Ambiguous { code: "unparseable_response".into() } };
                let id = v.get("id").and_then(Value::as_str).map(String::from);
                let state = refund_state(&v);
                RefundOutcome::Accepted { provider_refund_ref: id, state }
            }
            409 => RefundOutcome::Ambiguous { code: "http_409".into() },
            // Stripe's rate limit: not processed, and worth trying again shortly.
            429 => RefundOutcome::NotProcessed {
                code: "rate_limited".into(),
                message: error_message(resp.status, &v, "rate limited"),
            },
            // Stripe's word that it did not refund, when the answer is a Stripe error object:
            // its error code, else its error type (`invalid_request_error` for bad
            // credentials). An idempotency error means another request holds the key (it may
            // refund); a 4xx without Stripe's error object came from something in between,
            // after which Stripe may have refunded: both in doubt.
            400..=499 => {
                let error = v.as_ref().and_then(|v| v.get("error"));
                let kind = error.and_then(|e| e.get("type")).and_then(Value::as_str);
                let code = error.and_then(|e| e.get("code")).and_then(Value::as_str).or(kind);
                match (kind, code) {
                    (Some("idempotency_error"), _) => RefundOutcome::Ambiguous { code: "idempotency_error".into() },
                    (Some(_), Some(code)) => RefundOutcome::NotProcessed {
                        code: code.into(),
                        message: error_message(resp.status, &v, "refund refused"),
                    },
                    _ => RefundOutcome::NotProcessed {
                        code: format!("http_{}", resp.status),
                        message: error_message(resp.status, &v, "refund refused"),
                    },
                }
            }
            s => RefundOutcome::Ambiguous { code: format!("http_{s}") },
        }
    }

    fn build_refund_query(&self, q: &RefundQuery<'_>) -> Result<WireRequest, BuildError> {
        let enc = |x: &str| percent_encoding::utf8_percent_encode(x, percent_encoding::NON_ALPHANUMERIC).to_string();
        let path = match q.provider_refund_ref {
            Some(id) => format!("/v1/refunds/{}", enc(id)),
            None => match q.after {
                None => format!("/v1/refunds?payment_intent={}&limit=100", enc(q.provider_ref)),
                Some(a) => {
                    format!("/v1/refunds?payment_intent={}&limit=100&starting_after={}", enc(q.provider_ref), enc(a))
                }
            },
        };
        Ok(self.request(http::Method::GET, path, None, None))
    }

    fn parse_refund_query(&self, q: &RefundQuery<'_>, _req: &WireRequest, resp: &WireResponse) -> RefundQueryOutcome {
        let v = parse_json(resp);
        let found = |r: &Value| RefundQueryOutcome::Found {
            provider_refund_ref: r.get("id").and_then(Value::as_str).map(String::from),
            state: refund_state(r),
        };
        match (resp.status, v) {
            (200, Some(v)) if v.get("object").and_then(Value::as_str) == Some("list") => {
                let data = v.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
                match data
                    .iter()
                    .find(|r| r.pointer("/metadata/paymux_refund").and_then(Value::as_str) == Some(q.refund_id))
                {
                    Some(r) => found(r),
                    None => match (v.get("has_more").and_then(Value::as_bool), data.last().and_then(|r| r.get("id"))) {
                        (Some(false), _) => RefundQueryOutcome::NotFound,
                        (Some(true), Some(Value::String(last))) => RefundQueryOutcome::NextPage { after: last.clone() },
                        _ => RefundQueryOutcome::Unknown { code: "refund_list_truncated".into() },
                    },
                }
            }
            (200, Some(v)) => found(&v),
            (s, _) => RefundQueryOutcome::Unknown { code: format!("http_{s}") },
        }
    }

    fn verify_webhook(
        &self,
        _path: &str,
        headers: &http::HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<WebhookEvent, WebhookError> {
        let header =
            headers.get("stripe-signature").and_then(|h| h.to_str().ok()).ok_or(WebhookError::MissingSignature)?;
        let mut ts: Option<i64> = None;
        let mut sigs: Vec<Vec<u8>> = Vec::new();
        for item in header.split(',') {
            match item.split_once('=') {
                Some(("t", v)) if ts.is_none() => ts = v.parse().ok(),
                Some(("v1", v)) => sigs.extend(crypto::unhex(v)),
                _ => {}
            }
        }
        let ts = ts.ok_or(WebhookError::MissingSignature)?;
        if sigs.is_empty() {
            return Err(WebhookError::MissingSignature);
        }
        let mut signed = ts.to_string().into_bytes();
        signed.push(b'.');
        signed.extend_from_slice(body);
        let key = self.webhook_secret.expose().as_bytes();
        if !sigs.iter().any(|s| crypto::hmac_sha256_verify(key, &signed, s)) {
            return Err(WebhookError::BadSignature);
        }
        if (now - ts).abs() > self.tolerance_secs {
            return Err(WebhookError::Stale);
        }
        let v: Value = serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
        let event_id = v
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| WebhookError::Malformed("no event id".into()))?
            .to_string();
        let event_type = v.get("type").and_then(Value::as_str).unwrap_or("").to_string();
        let obj = v.pointer("/data/object").cloned().unwrap_or(Value::Null);
        let kind = match obj.get("object").and_then(Value::as_str) {
            // `payment_intent.created` announces what paymux itself did and says nothing of
            // the outcome; delivered late (events come in any order), its
            // `requires_payment_method` would move a payment back from where it got.
            Some("payment_intent")
                if event_type.starts_with("payment_intent.") && event_type != "payment_intent.created" =>
            {
                let p =
                    payment_from_intent(&obj).ok_or_else(|| WebhookError::Malformed("bad payment_intent".into()))?;
                WebhookKind::Payment {
                    provider_ref: p.provider_ref,
                    attempt_ref: obj.pointer("/metadata/paymux_attempt").and_then(Value::as_str).map(String::from),
                    state: p.state,
                    money: stated_money_of(obj.get("amount").and_then(Value::as_i64), obj.get("currency"))?,
                }
            }
            Some("refund") => WebhookKind::Refund {
                refund_id: obj.pointer("/metadata/paymux_refund").and_then(Value::as_str).map(String::from),
                provider_refund_ref: obj.get("id").and_then(Value::as_str).map(String::from),
                state: refund_state(&obj),
            },
            _ => WebhookKind::Ignored { event_type },
        };
        Ok(WebhookEvent { event_id, kind })
    }

    fn webhook_ack(&self) -> (&'static str, Bytes) {
        ("application/json", Bytes::from_static(b"{\"received\":true}"))
    }
}

fn refund_state(v: &Value) -> RefundState {
    match v.get("status").and_then(Value::as_str) {
        Some("succeeded") => RefundState::Succeeded,
        Some("failed") | Some("canceled") => RefundState::Failed {
            code: v.get("failure_reason").and_then(Value::as_str).unwrap_or("refund_failed").to_string(),
            message: "refund failed at the provider".into(),
        },
        _ => RefundState::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Currency, Money};

    fn conn() -> Stripe {
        Stripe::new(Secret::new("sk_test_1".into()), Secret::new("whsec_1".into()), 300, 0)
    }

    #[test]
    fn create_is_form_encoded_with_idempotency() {
        let md = BTreeMap::from([("channel".to_string(), "web app".to_string())]);
        let pmd = serde_json::json!({"token": "pm_card_visa"});
        let req = CreateRequest {
            payment_id: "pay_1",
            attempt_ref: "pay_1-a1",
            money: Money::new(1999, Currency::parse("HKD").unwrap()).unwrap(),
            method: Method::Visa,
            order_id: "o-1",
            customer_id: None,
            customer_email: None,
            payment_method_data: Some(&pmd),
            return_url: Some("https://shop/r?a=1&b=2"),
            metadata: &md,
            notify_url: "http://x",
        };
        let w = conn().build_create(&req).unwrap();
        let body = std::str::from_utf8(&w.body).unwrap();
        assert!(body.starts_with("amount=1999&currency=hkd&confirm=true"), "{body}");
        assert!(body.contains("metadata%5Bchannel%5D=web+app"));
        assert!(body.contains("return_url=https%3A%2F%2Fshop%2Fr%3Fa%3D1%26b%3D2"));
        assert!(w.headers.contains(&("idempotency-key", "pay_1-a1".into())));
        let no_token = CreateRequest { payment_method_data: None, ..req };
        assert_eq!(conn().build_create(&no_token).unwrap_err().code, "payment_method_data_required");
        // What Stripe cannot take is refused before anything is built, naming the field.
        let md50: BTreeMap<String, String> = (0..50).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let e = conn().check_create(&CreateRequest { metadata: &md50, ..req }).unwrap_err();
        assert_eq!((e.code, e.field), ("metadata_too_large", Some("metadata")));
        let bhd = |minor| CreateRequest { money: Money::new(minor, Currency::parse("BHD").unwrap()).unwrap(), ..req };
        assert_eq!(conn().check_create(&bhd(1005)).unwrap_err().field, Some("amount"));
        assert!(conn().check_create(&bhd(1000)).is_ok());
    }

    #[test]
    fn amounts_go_in_stripes_units_and_come_back_in_iso_minor_units() {
        let m = |minor, c| Money::new(minor, Currency::parse(c).unwrap()).unwrap();
        // ISK: no decimals in ISO 4217, two at Stripe (100 = 1 króna).
        assert_eq!(stripe_amount(m(5000, "ISK")).unwrap(), 500_000);
        // MGA: two decimals in ISO 4217, none at Stripe; whole ariary only.
        assert_eq!(stripe_amount(m(500_000, "MGA")).unwrap(), 5000);
        assert_eq!(stripe_amount(m(500_050, "MGA")).unwrap_err().code, "amount_not_chargeable");
        assert_eq!(stripe_amount(m(1999, "HKD")).unwrap(), 1999);
        assert_eq!(stripe_amount(m(500, "JPY")).unwrap(), 500);
        // Refunds are held to the same steps as creates.
        assert_eq!(conn().check_refund(m(5, "KWD")).unwrap_err().field, Some("amount"));
        assert!(conn().check_refund(m(10, "KWD")).is_ok() && conn().check_refund(m(1, "ISK")).is_ok());
        let refund = |money| RefundRequest {
            refund_id: "re_1",
            payment_id: "pay_1",
            provider_ref: "pi_1",
            amount: money,
            reason: None,
            notify_url: "",
        };
        let w = conn().build_refund(&refund(m(70, "ISK"))).unwrap();
        assert!(std::str::from_utf8(&w.body).unwrap().contains("amount=7000&"));
        assert!(conn().build_refund(&refund(m(1005, "BHD"))).is_err());
        // What Stripe states is read back into ISO minor units.
        let pi = |amount: i64, c: &str| serde_json::json!({"id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount": amount, "currency": c});
        assert_eq!(payment_from_intent(&pi(500_000, "isk")).unwrap().money, Some(m(5000, "ISK")));
        assert_eq!(payment_from_intent(&pi(5000, "mga")).unwrap().money, Some(m(500_000, "MGA")));
        assert_eq!(payment_from_intent(&pi(1999, "hkd")).unwrap().money, Some(m(1999, "HKD")));
        assert!(stated_money_of(Some(150), Some(&serde_json::json!("isk"))).is_err(), "a fraction of a króna");
    }

    fn resp(status: u16, body: &str) -> WireResponse {
        WireResponse { status, headers: http::HeaderMap::new(), body: Bytes::from(body.to_string()) }
    }

    #[test]
    fn classifies_create_outcomes() {
        let c = conn();
        let w = WireRequest { method: http::Method::POST, path: "/".into(), headers: vec![], body: Bytes::new() };
        let ok =
            r#"{"id":"pi_1","object":"payment_intent","status":"succeeded","amount_received":5,"next_action":null}"#;
        assert!(
            matches!(c.parse_create(&w, &resp(200, ok)), CreateOutcome::Accepted(p) if p.state == ProviderState::Succeeded)
        );
        let dec = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"no","payment_intent":{"id":"pi_2"}}}"#;
        assert_eq!(
            c.parse_create(&w, &resp(402, dec)),
            CreateOutcome::Declined {
                provider_ref: Some("pi_2".into()),
                code: "insufficient_funds".into(),
                message: "no".into()
            }
        );
        assert!(matches!(c.parse_create(&w, &resp(429, "{}")), CreateOutcome::NotProcessed { .. }));
        let bad_key =
            r#"{"error":{"type":"invalid_request_error","message":"Invalid API Key provided: sk_live_****1234"}}"#;
        match c.parse_create(&w, &resp(401, bad_key)) {
            CreateOutcome::NotProcessed { message, .. } => assert!(!message.contains("sk_"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(c.parse_create(&w, &resp(500, "{}")), CreateOutcome::Ambiguous { .. }));
        assert!(matches!(c.parse_create(&w, &resp(200, "<html>")), CreateOutcome::Ambiguous { .. }));
        assert!(matches!(c.parse_create(&w, &resp(409, "{}")), CreateOutcome::Ambiguous { .. }));
        // A refund Stripe refuses names a code the engine takes as its word, even without
        // `error.code` (a bad key: only `error.type`); a bare 404 (not Stripe's error object)
        // keeps the HTTP status, which the engine holds in doubt.
        for (status, body, code) in [
            (
                400,
                r#"{"error":{"type":"invalid_request_error","code":"charge_already_refunded"}}"#,
                "charge_already_refunded",
            ),
            (401, bad_key, "invalid_request_error"),
            (404, "", "http_404"),
        ] {
            match c.parse_refund(&w, &resp(status, body)) {
                RefundOutcome::NotProcessed { code: got, .. } => assert_eq!(got, code),
                other => panic!("{other:?}"),
            }
        }
        let held = r#"{"error":{"type":"idempotency_error","message":"in use"}}"#;
        assert!(matches!(c.parse_refund(&w, &resp(400, held)), RefundOutcome::Ambiguous { .. }));
    }

    #[test]
    fn search_lag_and_404s_are_not_answers() {
        let lagging = Stripe::new(Secret::new("sk".into()), Secret::new("wh".into()), 300, 60_000);
        let q = QueryRef { attempt_ref: "pay_1-a1", provider_ref: None, since_send_ms: 5_000 };
        let w = lagging.build_query(&q).unwrap();
        assert!(w.path.starts_with("/v1/payment_intents/search?query="));
        let empty = resp(200, r#"{"object":"search_result","data":[]}"#);
        assert_eq!(lagging.parse_query(&q, &w, &empty), QueryOutcome::NotFound { authoritative: false });
        let late = QueryRef { since_send_ms: 60_000, ..q.clone() };
        assert_eq!(lagging.parse_query(&late, &w, &empty), QueryOutcome::NotFound { authoritative: true });
        // A 404 on search (no such endpoint, a proxy page) is not "no such payment".
        assert!(matches!(
            lagging.parse_query(&late, &w, &resp(404, "<html>not found</html>")),
            QueryOutcome::Unknown { .. }
        ));
        let by_id = QueryRef { provider_ref: Some("pi_9"), ..late.clone() };
        let w2 = lagging.build_query(&by_id).unwrap();
        let missing = resp(404, r#"{"error":{"type":"invalid_request_error","code":"resource_missing"}}"#);
        assert_eq!(lagging.parse_query(&by_id, &w2, &missing), QueryOutcome::NotFound { authoritative: true });
        assert!(matches!(lagging.parse_query(&by_id, &w2, &resp(404, "nope")), QueryOutcome::Unknown { .. }));
    }

    #[test]
    fn webhook_signature_rules() {
        let c = conn();
        let body = br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"id":"pi_1","object":"payment_intent","status":"succeeded","metadata":{"paymux_attempt":"pay_1-a1"}}}}"#;
        let now = 1_700_000_000;
        let sig = crypto::hex(&crypto::hmac_sha256(b"whsec_1", &[format!("{now}.").as_bytes(), body].concat()));
        let mut h = http::HeaderMap::new();
        h.insert("stripe-signature", format!("t={now},v1=00ff,v1={sig}").parse().unwrap());
        let ev = c.verify_webhook("/", &h, body, now + 10).unwrap();
        assert_eq!(
            ev.kind,
            WebhookKind::Payment {
                provider_ref: "pi_1".into(),
                attempt_ref: Some("pay_1-a1".into()),
                state: ProviderState::Succeeded,
                money: None,
            }
        );
        assert_eq!(c.verify_webhook("/", &h, body, now + 301).unwrap_err(), WebhookError::Stale);
        let mut tampered = body.to_vec();
        tampered[10] = b'X';
        assert_eq!(c.verify_webhook("/", &h, &tampered, now).unwrap_err(), WebhookError::BadSignature);
        assert_eq!(
            c.verify_webhook("/", &http::HeaderMap::new(), body, now).unwrap_err(),
            WebhookError::MissingSignature
        );
        // A PaymentIntent's creation says nothing of its outcome: not applied, whenever it comes.
        let created = std::str::from_utf8(body).unwrap().replace("payment_intent.succeeded", "payment_intent.created");
        let sig = crypto::hex(&crypto::hmac_sha256(b"whsec_1", format!("{now}.{created}").as_bytes()));
        h.insert("stripe-signature", format!("t={now},v1={sig}").parse().unwrap());
        let ev = c.verify_webhook("/", &h, created.as_bytes(), now).unwrap();
        assert_eq!(ev.kind, WebhookKind::Ignored { event_type: "payment_intent.created".into() });
    }
}
