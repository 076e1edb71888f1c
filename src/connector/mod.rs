//! Connectors: one per provider protocol, behind one trait.
//!
//! A connector is pure translation: it turns a normalised request into the provider's wire
//! request (signed), and the provider's wire response into a classified outcome. It does no
//! I/O; [`transport`] sends the bytes, and the engine decides what an outcome means for
//! failover. That split keeps the "never charge twice" rules in one place (the engine), makes
//! every connector benchable, and lets new providers slot in as new modules.
//!
//! Classification contract, the heart of safe failover:
//! - `NotProcessed`: the provider certainly did not act (rejected before processing, 429, a
//!   documented retryable code). The engine may try the next channel.
//! - `Ambiguous`: it may have acted (5xx, unparseable or unverifiable answer). The engine must
//!   query status before anything else.
//! - `Accepted` / `Declined`: it acted; the payment lives on this channel.

pub mod antom;
pub mod stripe;
pub mod transport;

use crate::domain::{Method, Money};
use bytes::Bytes;
use std::collections::BTreeMap;

/// A request ready to send: path relative to the channel's base URL, headers, body.
#[derive(Debug, Clone)]
pub struct WireRequest {
    pub method: http::Method,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// A provider's answer as received.
#[derive(Debug, Clone)]
pub struct WireResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// What the app asked for, plus paymux's ids, in the form connectors translate.
#[derive(Debug, Clone)]
pub struct CreateRequest<'a> {
    pub payment_id: &'a str,
    /// Idempotency reference for this attempt: `<payment id>-a<attempt number>`.
    pub attempt_ref: &'a str,
    pub money: Money,
    pub method: Method,
    pub order_id: &'a str,
    pub customer_id: Option<&'a str>,
    pub customer_email: Option<&'a str>,
    pub payment_method_data: Option<&'a serde_json::Value>,
    pub return_url: Option<&'a str>,
    pub metadata: &'a BTreeMap<String, String>,
    /// URL the provider should send callbacks to.
    pub notify_url: &'a str,
}

/// Provider-side state of a payment, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderState {
    RequiresAction,
    Processing,
    Succeeded,
    Failed { code: String, message: String },
    Canceled,
}

/// A payment as the provider holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderPayment {
    /// The provider's id (`pi_...`, Antom `paymentId`).
    pub provider_ref: String,
    pub state: ProviderState,
    /// `next_action` for the app (`{"type": "redirect", "url": ...}`), when the payer must act.
    pub next_action: Option<serde_json::Value>,
    /// The amount and currency the provider says the payment is for, when it says: an
    /// answer about another amount is about another payment, whatever reference it carries.
    pub money: Option<Money>,
}

/// Outcome of a create call.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// Processed; the payment lives here (may still need payer action or be pending).
    Accepted(ProviderPayment),
    /// Processed and refused (card declined). Final: no failover.
    Declined { provider_ref: Option<String>, code: String, message: String },
    /// Certainly not processed. Safe to try the next channel. `message` is the provider's
    /// explanation, for the merchant (never a secret).
    NotProcessed { code: String, message: String },
    /// May have been processed. Query before doing anything else.
    Ambiguous { code: String },
    /// Processed, by the provider's own answer, which does not say which payment it is
    /// (Antom without `paymentId`): the status query tells; never another channel, even
    /// when the query cannot find it yet.
    Unnamed { code: String },
}

/// How to find a payment at the provider.
#[derive(Debug, Clone)]
pub struct QueryRef<'a> {
    pub attempt_ref: &'a str,
    pub provider_ref: Option<&'a str>,
    /// Milliseconds since the ambiguous send; some providers' lookups lag.
    pub since_send_ms: u64,
}

/// Outcome of a status query.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryOutcome {
    Found(ProviderPayment),
    /// The provider has no such payment. `authoritative` is false when its lookup may lag.
    NotFound {
        authoritative: bool,
    },
    /// The query itself failed; nothing learned.
    Unknown {
        code: String,
    },
}

/// Outcome of a cancel call.
#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    Canceled,
    /// The provider refused (already captured, already final).
    Refused {
        code: String,
        message: String,
    },
    /// Nothing learned.
    Unknown {
        code: String,
    },
}

/// A refund as the connector sends it.
#[derive(Debug, Clone)]
pub struct RefundRequest<'a> {
    pub refund_id: &'a str,
    pub payment_id: &'a str,
    pub provider_ref: &'a str,
    pub amount: Money,
    pub reason: Option<&'a str>,
    pub notify_url: &'a str,
}

/// Provider-side state of a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundState {
    Pending,
    Succeeded,
    Failed { code: String, message: String },
}

/// Outcome of a refund call.
#[derive(Debug, Clone, PartialEq)]
pub enum RefundOutcome {
    Accepted { provider_refund_ref: Option<String>, state: RefundState },
    NotProcessed { code: String, message: String },
    Ambiguous { code: String },
}

/// How to find a refund at the provider.
#[derive(Debug, Clone)]
pub struct RefundQuery<'a> {
    /// paymux's refund id (the idempotency reference sent with the refund).
    pub refund_id: &'a str,
    pub provider_refund_ref: Option<&'a str>,
    /// The payment's id at the provider.
    pub provider_ref: &'a str,
    /// Where a provider's listing goes on: the last item of the page before (`NextPage`).
    pub after: Option<&'a str>,
}

/// Outcome of a refund status query.
#[derive(Debug, Clone, PartialEq)]
pub enum RefundQueryOutcome {
    Found {
        provider_refund_ref: Option<String>,
        state: RefundState,
    },
    /// The provider has no such refund.
    NotFound,
    /// Not on this page of the provider's listing; more follow after `after`.
    NextPage {
        after: String,
    },
    Unknown {
        code: String,
    },
}

/// A verified provider callback, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    /// Provider's event id (dedup key).
    pub event_id: String,
    pub kind: WebhookKind,
}

/// What a callback says happened.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookKind {
    Payment {
        provider_ref: String,
        attempt_ref: Option<String>,
        state: ProviderState,
        /// The amount and currency the event states, when it states them: the engine applies
        /// an event only to a payment of that amount.
        money: Option<Money>,
    },
    Refund {
        refund_id: Option<String>,
        provider_refund_ref: Option<String>,
        state: RefundState,
    },
    /// Verified, but nothing paymux acts on.
    Ignored {
        event_type: String,
    },
}

/// Why a callback was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("signature header missing or malformed")]
    MissingSignature,
    #[error("signature does not verify")]
    BadSignature,
    #[error("timestamp outside the tolerance window")]
    Stale,
    #[error("signed for another merchant account than this channel's")]
    OtherAccount,
    #[error("payload is not a recognised event: {0}")]
    Malformed(String),
}

/// A request could not be translated for this provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct BuildError {
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when the request itself is what this provider cannot take
    /// (the API then names it in a validation error).
    pub field: Option<&'static str>,
}

/// One provider protocol. Implementations are built once per channel when the policy
/// compiles and are immutable afterwards.
pub trait Connector: Send + Sync + 'static {
    /// The connector kind as written in `channels.yaml` (`"stripe"`).
    fn kind(&self) -> &'static str;
    /// The merchant account it acts for, when the config names one (Antom's client id); a
    /// channel's open payments belong to it. `None` when only a secret says (Stripe's key).
    fn account(&self) -> Option<&str> {
        None
    }
    /// Whether an RSA-class signature makes `build_*` cost hundreds of microseconds, so the
    /// engine runs it on the blocking pool instead of an async worker.
    fn expensive_signing(&self) -> bool {
        false
    }
    /// Whether this provider can take the request at all, judged from its content alone (no
    /// ids, no signing): a payment no routed channel can take is refused before anything is
    /// stored, and a channel that cannot take it is left out of its route. `build_create`
    /// fails with the same errors.
    fn check_create(&self, req: &CreateRequest<'_>) -> Result<(), BuildError>;
    /// Whether this provider can refund `amount` of a payment it holds, judged from the amount
    /// alone (a currency it refunds only in larger steps): refused before anything is
    /// reserved. `build_refund` fails with the same errors.
    fn check_refund(&self, _amount: Money) -> Result<(), BuildError> {
        Ok(())
    }
    fn build_create(&self, req: &CreateRequest<'_>) -> Result<WireRequest, BuildError>;
    fn parse_create(&self, req: &WireRequest, resp: &WireResponse) -> CreateOutcome;
    fn build_query(&self, q: &QueryRef<'_>) -> Result<WireRequest, BuildError>;
    fn parse_query(&self, q: &QueryRef<'_>, req: &WireRequest, resp: &WireResponse) -> QueryOutcome;
    fn build_cancel(&self, attempt_ref: &str, provider_ref: &str) -> Result<WireRequest, BuildError>;
    fn parse_cancel(&self, req: &WireRequest, resp: &WireResponse) -> CancelOutcome;
    fn build_refund(&self, r: &RefundRequest<'_>) -> Result<WireRequest, BuildError>;
    fn parse_refund(&self, req: &WireRequest, resp: &WireResponse) -> RefundOutcome;
    fn build_refund_query(&self, q: &RefundQuery<'_>) -> Result<WireRequest, BuildError>;
    fn parse_refund_query(&self, q: &RefundQuery<'_>, req: &WireRequest, resp: &WireResponse) -> RefundQueryOutcome;
    /// Verifies and parses a callback. `path` is the path the provider signed (Antom signs it).
    fn verify_webhook(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<WebhookEvent, WebhookError>;
    /// The acknowledgement body the provider expects (status 200).
    fn webhook_ack(&self) -> (&'static str, Bytes);
}

/// The money a callback states (an amount in minor units and a currency code, in either
/// case): `None` when it states neither; one without the other, or an amount or currency
/// paymux cannot read, makes the callback malformed.
pub(crate) fn stated_money(
    minor: Option<i64>,
    currency: Option<&serde_json::Value>,
) -> Result<Option<Money>, WebhookError> {
    match (minor, currency) {
        (None, None) => Ok(None),
        (Some(minor), Some(c)) => {
            let c = c.as_str().and_then(|c| crate::domain::Currency::parse(&c.to_ascii_uppercase()).ok());
            c.and_then(|c| Money::new(minor, c).ok())
                .map(Some)
                .ok_or_else(|| WebhookError::Malformed("unreadable amount or currency".into()))
        }
        _ => Err(WebhookError::Malformed("an amount without a currency, or a currency without an amount".into())),
    }
}

/// The methods a connector kind can carry at all; channel config may narrow them.
pub fn kind_methods(kind: &str) -> &'static [Method] {
    match kind {
        "stripe" => stripe::METHODS,
        "antom" => antom::METHODS,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stated_money_reads_both_or_neither() {
        let hkd = crate::domain::Currency::parse("HKD").unwrap();
        assert_eq!(stated_money(None, None), Ok(None));
        assert_eq!(stated_money(Some(1999), Some(&json!("hkd"))), Ok(Some(Money::new(1999, hkd).unwrap())));
        assert_eq!(stated_money(Some(1999), Some(&json!("HKD"))), Ok(Some(Money::new(1999, hkd).unwrap())));
        for (minor, cur) in [
            (Some(1999), None),
            (None, Some(json!("hkd"))),
            (Some(1999), Some(json!("xyz"))),
            (Some(0), Some(json!("hkd"))),
            (Some(5), Some(json!(5))),
        ] {
            assert!(matches!(stated_money(minor, cur.as_ref()), Err(WebhookError::Malformed(_))), "{minor:?} {cur:?}");
        }
    }
}
