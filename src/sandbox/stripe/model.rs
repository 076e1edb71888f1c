//! The Stripe objects the simulator keeps (PaymentIntent, Charge, Refund, PaymentMethod),
//! rendered in their full JSON shape (every field present, `null` where empty, `object` set),
//! and Stripe-style API errors.

use super::cards::{Card, Decline};
use crate::sandbox::http::Response;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// A PaymentIntent's `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PiStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresAction,
    RequiresCapture,
    Canceled,
    Succeeded,
}

impl PiStatus {
    /// Still before (or between) confirmations: it may be confirmed, and its amount, currency
    /// and payment method changed.
    pub(crate) fn awaits_confirmation(self) -> bool {
        matches!(self, PiStatus::RequiresPaymentMethod | PiStatus::RequiresConfirmation | PiStatus::RequiresAction)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PiStatus::RequiresPaymentMethod => "requires_payment_method",
            PiStatus::RequiresConfirmation => "requires_confirmation",
            PiStatus::RequiresAction => "requires_action",
            PiStatus::RequiresCapture => "requires_capture",
            PiStatus::Canceled => "canceled",
            PiStatus::Succeeded => "succeeded",
        }
    }
}

/// A saved (test) payment method.
pub(crate) struct PaymentMethod {
    pub id: String,
    pub card: &'static Card,
    pub created: i64,
    pub fingerprint: String,
}

/// A PaymentIntent.
pub(crate) struct Intent {
    pub id: String,
    pub client_secret: String,
    pub amount: i64,
    pub currency: String,
    pub status: PiStatus,
    pub capture_method: String,
    pub confirmation_method: String,
    pub created: i64,
    pub metadata: BTreeMap<String, String>,
    pub description: Option<String>,
    pub receipt_email: Option<String>,
    pub customer: Option<String>,
    pub payment_method: Option<String>,
    pub payment_method_types: Vec<String>,
    pub return_url: Option<String>,
    pub request_three_d_secure: String,
    pub setup_future_usage: Option<String>,
    pub statement_descriptor: Option<String>,
    pub statement_descriptor_suffix: Option<String>,
    pub last_payment_error: Option<Value>,
    pub next_action: Option<Value>,
    pub latest_charge: Option<String>,
    pub amount_received: i64,
    pub amount_capturable: i64,
    pub canceled_at: Option<i64>,
    pub cancellation_reason: Option<String>,
    /// Bookkeeping: total of succeeded refunds (not a PaymentIntent field).
    pub amount_refunded: i64,
}

/// A charge (one per confirmation attempt).
pub(crate) struct Charge {
    pub id: String,
    pub payment_intent: String,
    pub amount: i64,
    pub currency: String,
    pub created: i64,
    pub payment_method: String,
    pub card: &'static Card,
    pub failure: Option<&'static Decline>,
    pub captured: bool,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub three_d_secure: bool,
    pub balance_transaction: Option<String>,
}

/// A refund.
pub(crate) struct Refund {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub created: i64,
    pub charge: String,
    pub payment_intent: String,
    pub reason: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub status: &'static str,
    pub balance_transaction: String,
    /// The acquirer reference number is known (after `refund.updated`).
    pub reference: Option<String>,
    /// Why a refund failed (`declined`, …), when it did.
    pub failure_reason: Option<&'static str>,
}

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map(Into::into).unwrap_or(Value::Null)
}

fn meta(m: &BTreeMap<String, String>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect())
}

pub(crate) fn intent_json(pi: &Intent) -> Value {
    json!({
        "id": pi.id,
        "object": "payment_intent",
        "amount": pi.amount,
        "amount_capturable": pi.amount_capturable,
        "amount_details": {"tip": {}},
        "amount_received": pi.amount_received,
        "application": null,
        "application_fee_amount": null,
        "automatic_payment_methods": null,
        "canceled_at": pi.canceled_at,
        "cancellation_reason": pi.cancellation_reason,
        "capture_method": pi.capture_method,
        "client_secret": pi.client_secret,
        "confirmation_method": pi.confirmation_method,
        "created": pi.created,
        "currency": pi.currency,
        "customer": pi.customer,
        "description": pi.description,
        "excluded_payment_method_types": null,
        "last_payment_error": opt(pi.last_payment_error.clone()),
        "latest_charge": pi.latest_charge,
        "livemode": false,
        "metadata": meta(&pi.metadata),
        "next_action": opt(pi.next_action.clone()),
        "on_behalf_of": null,
        "payment_method": pi.payment_method,
        "payment_method_configuration_details": null,
        "payment_method_options": {"card": {
            "installments": null,
            "mandate_options": null,
            "network": null,
            "request_three_d_secure": pi.request_three_d_secure,
        }},
        "payment_method_types": pi.payment_method_types,
        "processing": null,
        "receipt_email": pi.receipt_email,
        "review": null,
        "setup_future_usage": pi.setup_future_usage,
        "shipping": null,
        "source": null,
        "statement_descriptor": pi.statement_descriptor,
        "statement_descriptor_suffix": pi.statement_descriptor_suffix,
        "status": pi.status.as_str(),
        "transfer_data": null,
        "transfer_group": null,
    })
}

fn card_details(pm: &PaymentMethod) -> Value {
    let c = pm.card;
    json!({
        "brand": c.brand,
        "checks": {"address_line1_check": null, "address_postal_code_check": null, "cvc_check": "pass"},
        "country": c.country,
        "display_brand": c.brand,
        "exp_month": 12,
        "exp_year": 2034,
        "fingerprint": pm.fingerprint,
        "funding": c.funding,
        "generated_from": null,
        "last4": c.last4,
        "networks": {"available": [c.brand], "preferred": null},
        "regulated_status": "unregulated",
        "three_d_secure_usage": {"supported": true},
        "wallet": null,
    })
}

fn billing_details() -> Value {
    json!({
        "address": {"city": null, "country": null, "line1": null, "line2": null, "postal_code": null, "state": null},
        "email": null,
        "name": null,
        "phone": null,
        "tax_id": null,
    })
}

pub(crate) fn payment_method_json(pm: &PaymentMethod) -> Value {
    json!({
        "id": pm.id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": billing_details(),
        "card": card_details(pm),
        "created": pm.created,
        "customer": null,
        "livemode": false,
        "metadata": {},
        "type": "card",
    })
}

pub(crate) fn charge_json(ch: &Charge, pi: &Intent, pm: &PaymentMethod) -> Value {
    let c = ch.card;
    let failed = ch.failure.is_some();
    let outcome = match ch.failure {
        None => json!({
            "network_status": "approved_by_network", "reason": null, "risk_level": "normal",
            "risk_score": 12, "seller_message": "Payment complete.", "type": "authorized"
        }),
        Some(d) => json!({
            "network_status": "declined_by_network", "reason": d.decline_code, "risk_level": "normal",
            "risk_score": 40, "seller_message": "The bank did not return any further details with this decline.",
            "type": "issuer_declined"
        }),
    };
    let three_d_secure = ch.three_d_secure.then(|| {
        json!({
            "authentication_flow": "challenge", "electronic_commerce_indicator": "05", "exemption_indicator": null,
            "result": "authenticated", "result_reason": null, "transaction_id": format!("{}-3ds", ch.id),
            "version": "2.2.0"
        })
    });
    let details = json!({"card": {
        "amount_authorized": if failed { Value::Null } else { json!(ch.amount) },
        "brand": c.brand,
        "checks": {"address_line1_check": null, "address_postal_code_check": null, "cvc_check": "pass"},
        "country": c.country,
        "exp_month": 12,
        "exp_year": 2034,
        "fingerprint": pm.fingerprint,
        "funding": c.funding,
        "installments": null,
        "last4": c.last4,
        "mandate": null,
        "network": c.brand,
        "network_token": {"used": false},
        "network_transaction_id": if failed { Value::Null } else { json!(format!("{}NTI", ch.id.trim_start_matches("ch_"))) },
        "three_d_secure": opt(three_d_secure),
        "wallet": null,
    }, "type": "card"});
    let head = json!({
        "id": ch.id,
        "object": "charge",
        "amount": ch.amount,
        "amount_captured": ch.amount_captured,
        "amount_refunded": ch.amount_refunded,
        "application": null,
        "application_fee": null,
        "application_fee_amount": null,
        "balance_transaction": ch.balance_transaction,
        "billing_details": billing_details(),
        "calculated_statement_descriptor": "PAYMUX SANDBOX",
        "captured": ch.captured,
        "created": ch.created,
        "currency": ch.currency,
        "customer": pi.customer,
        "description": pi.description,
        "disputed": false,
        "failure_balance_transaction": null,
        "failure_code": ch.failure.map(|d| d.code),
        "failure_message": ch.failure.map(|d| d.message),
        "fraud_details": {},
        "livemode": false,
    });
    let rest = json!({
        "metadata": meta(&pi.metadata),
        "on_behalf_of": null,
        "outcome": outcome,
        "paid": !failed,
        "payment_intent": ch.payment_intent,
        "payment_method": ch.payment_method,
        "payment_method_details": details,
        "receipt_email": pi.receipt_email,
        "receipt_number": null,
        "receipt_url": null,
        // Refunded in full, what was not captured (released) included.
        "refunded": !failed && ch.amount_refunded >= ch.amount,
        "review": null,
        "shipping": null,
        "source": null,
        "source_transfer": null,
        "statement_descriptor": pi.statement_descriptor,
        "statement_descriptor_suffix": pi.statement_descriptor_suffix,
        "status": if failed { "failed" } else { "succeeded" },
        "transfer_data": null,
        "transfer_group": null,
    });
    merge(head, rest)
}

/// The union of two JSON objects.
fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

pub(crate) fn refund_json(r: &Refund) -> Value {
    let (reference, reference_status) = match &r.reference {
        Some(arn) => (json!(arn), "available"),
        None => (Value::Null, "pending"),
    };
    json!({
        "id": r.id,
        "object": "refund",
        "amount": r.amount,
        "balance_transaction": r.balance_transaction,
        "charge": r.charge,
        "created": r.created,
        "currency": r.currency,
        "description": null,
        "destination_details": {"card": {
            "reference": reference,
            "reference_status": reference_status,
            "reference_type": "acquirer_reference_number",
            "type": "refund",
        }, "type": "card"},
        "failure_balance_transaction": null,
        "failure_reason": r.failure_reason,
        "instructions_email": null,
        "metadata": meta(&r.metadata),
        "next_action": null,
        "payment_intent": r.payment_intent,
        "pending_reason": null,
        "reason": r.reason,
        "receipt_number": null,
        "source_transfer_reversal": null,
        "status": r.status,
        "transfer_reversal": null,
    })
}

/// A Stripe API error: HTTP status plus the `error` object.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: u16,
    pub error: Map<String, Value>,
}

impl ApiError {
    fn new(status: u16, kind: &str, code: Option<&str>, message: impl Into<String>, param: Option<&str>) -> Self {
        let mut error = Map::new();
        if let Some(c) = code {
            error.insert("code".into(), json!(c));
            error.insert(
                "doc_url".into(),
                json!(format!("https://stripe.com/docs/error-codes/{}", c.replace('_', "-"))),
            );
        }
        error.insert("message".into(), json!(message.into()));
        if let Some(p) = param {
            error.insert("param".into(), json!(p));
        }
        error.insert("type".into(), json!(kind));
        ApiError { status, error }
    }

    /// 400 `invalid_request_error`.
    pub(crate) fn invalid(message: impl Into<String>, param: Option<&str>, code: Option<&str>) -> Self {
        Self::new(400, "invalid_request_error", code, message, param)
    }

    /// 400 `parameter_missing`.
    pub(crate) fn missing(param: &str) -> Self {
        Self::invalid(format!("Missing required param: {param}."), Some(param), Some("parameter_missing"))
    }

    /// 400 `parameter_unknown`.
    pub(crate) fn unknown(param: &str) -> Self {
        Self::invalid(format!("Received unknown parameter: {param}"), Some(param), Some("parameter_unknown"))
    }

    /// 400 `payment_intent_unexpected_state`.
    pub(crate) fn state(message: impl Into<String>) -> Self {
        Self::invalid(message, None, Some("payment_intent_unexpected_state"))
    }

    /// 404 `resource_missing`.
    pub(crate) fn no_such(kind: &str, id: &str, param: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            Some("resource_missing"),
            format!("No such {kind}: '{id}'"),
            Some(param),
        )
    }

    /// 401, for a missing or wrong API key.
    pub(crate) fn auth(message: impl Into<String>, code: Option<&str>) -> Self {
        Self::new(401, "invalid_request_error", code, message, None)
    }

    /// 400 `idempotency_error`: a key reused with other parameters (Stripe names no code).
    pub(crate) fn idempotency_mismatch(message: String) -> Self {
        Self::new(400, "idempotency_error", None, message, None)
    }

    /// 409 `idempotency_key_in_use`: the key's first request is still being processed (the
    /// SDKs retry a 409).
    pub(crate) fn idempotency_in_use(message: String) -> Self {
        Self::new(409, "invalid_request_error", Some("idempotency_key_in_use"), message, None)
    }

    /// 404 for paths Stripe does not serve.
    pub(crate) fn unrecognized(method: &str, path: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            None,
            format!(
                "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/."
            ),
            None,
        )
    }

    /// An injected provider failure (`api_error`, or `rate_limit_error` for 429).
    pub(crate) fn injected(status: u16) -> Self {
        match status {
            429 => Self::new(
                429,
                "invalid_request_error",
                Some("rate_limit"),
                "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests.",
                None,
            ),
            400..=499 => Self::new(
                status,
                "invalid_request_error",
                None,
                "The request could not be processed (sandbox fault injection).",
                None,
            ),
            _ => Self::new(
                status,
                "api_error",
                None,
                "An unknown error occurred while processing your request (sandbox fault injection).",
                None,
            ),
        }
    }

    /// 402 `card_error` for a decline, with the updated PaymentIntent embedded.
    pub(crate) fn card(error: Map<String, Value>) -> Self {
        ApiError { status: 402, error }
    }

    /// The HTTP response.
    pub(crate) fn response(&self, request_id: &str) -> Response {
        let mut e = self.error.clone();
        e.insert("request_log_url".into(), json!(format!("https://dashboard.stripe.com/test/logs/{request_id}")));
        Response::json(self.status, &json!({"error": e}))
    }
}

/// The `last_payment_error` / 402 `error` object of a decline.
pub(crate) fn decline_error(d: &Decline, charge: &str, pm: &PaymentMethod) -> Map<String, Value> {
    let mut e = Map::new();
    if let Some(a) = d.advice_code {
        e.insert("advice_code".into(), json!(a));
    }
    e.insert("charge".into(), json!(charge));
    e.insert("code".into(), json!(d.code));
    e.insert("decline_code".into(), json!(d.decline_code));
    e.insert("doc_url".into(), json!(format!("https://stripe.com/docs/error-codes/{}", d.code.replace('_', "-"))));
    e.insert("message".into(), json!(d.message));
    if let Some(p) = d.param {
        e.insert("param".into(), json!(p));
    }
    e.insert("payment_method".into(), payment_method_json(pm));
    e.insert("type".into(), json!("card_error"));
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::stripe::cards::lookup;

    #[test]
    fn errors_have_stripe_shape() {
        let r = ApiError::missing("amount").response("req_1");
        assert_eq!(r.status, 400);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["code"], "parameter_missing");
        assert_eq!(v["error"]["param"], "amount");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["doc_url"], "https://stripe.com/docs/error-codes/parameter-missing");
        assert_eq!(v["error"]["request_log_url"], "https://dashboard.stripe.com/test/logs/req_1");
        let v: Value = serde_json::from_slice(&ApiError::injected(503).response("r").body).unwrap();
        assert_eq!(v["error"]["type"], "api_error");
    }

    #[test]
    fn refund_reference_status_follows_reference() {
        let mut r = Refund {
            id: "re_1".into(),
            amount: 5,
            currency: "hkd".into(),
            created: 1,
            charge: "ch_1".into(),
            payment_intent: "pi_1".into(),
            reason: None,
            metadata: BTreeMap::new(),
            status: "succeeded",
            balance_transaction: "txn_1".into(),
            reference: None,
            failure_reason: None,
        };
        assert_eq!(refund_json(&r)["destination_details"]["card"]["reference_status"], "pending");
        r.reference = Some("123".into());
        let v = refund_json(&r);
        assert_eq!(v["destination_details"]["card"]["reference_status"], "available");
        assert!(v["failure_reason"].is_null() && v.get("reason").is_some());
        let pm = PaymentMethod {
            id: "pm_1".into(),
            card: lookup("pm_card_visa").unwrap(),
            created: 1,
            fingerprint: "f".into(),
        };
        assert_eq!(payment_method_json(&pm)["card"]["last4"], "4242");
    }
}
