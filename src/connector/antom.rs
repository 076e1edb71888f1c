//! Antom (Alipay+ AMS) connector for AlipayHK.
//!
//! Wire facts (checked against global-open-sdk-python 1.7.x): JSON bodies with string
//! minor-unit amounts; headers `Client-Id`, `Request-Time` (ISO-8601 with offset) and
//! `Signature: algorithm=RSA256,keyVersion=N,signature=<urlencoded base64>` where the signature
//! is SHA256withRSA over `"POST <path>\n<client-id>.<request-time>.<body>"`. Responses and
//! notifies are signed the same way (response headers `client-id`, `response-time`,
//! `signature`). Client ids starting with `SANDBOX_` use `/ams/sandbox/api` paths.

use super::*;
use crate::crypto::{self, RsaSigner, RsaVerifier};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// Methods this connector carries.
pub const METHODS: &[Method] = &[Method::AlipayHk];

/// A configured Antom channel.
pub struct Antom {
    client_id: String,
    signer: RsaSigner,
    provider_key: RsaVerifier,
    key_version: u32,
    settlement_currency: Option<String>,
}

/// Result codes with `resultStatus: F` that mean the payer or risk engine refused (a decline),
/// not that the request was rejected before processing.
const DECLINE_CODES: &[&str] = &[
    "RISK_REJECT",
    "USER_BALANCE_NOT_ENOUGH",
    "USER_AMOUNT_EXCEED_LIMIT",
    "USER_STATUS_ABNORMAL",
    "PAYMENT_AMOUNT_EXCEED_LIMIT",
    "ORDER_IS_CLOSED",
];

/// Formats a Request-Time the way the SDK does: seconds, `+00:00`.
pub fn request_time(now: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+00:00");
    now.to_offset(time::UtcOffset::UTC).format(&f).unwrap_or_default()
}

/// The string Antom signs: `"POST <path>\n<client-id>.<time>.<body>"`.
pub fn string_to_sign(path: &str, client_id: &str, time: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("POST {path}\n{client_id}.{time}.").into_bytes();
    v.extend_from_slice(body);
    v
}

/// `algorithm=RSA256,keyVersion=N,signature=<urlencoded base64>`.
pub fn signature_header(key_version: u32, sig: &[u8]) -> String {
    let b64 = B64.encode(sig);
    let enc = percent_encoding::utf8_percent_encode(&b64, percent_encoding::NON_ALPHANUMERIC);
    format!("algorithm=RSA256,keyVersion={key_version},signature={enc}")
}

/// Extracts and decodes the signature from a Signature header value.
pub fn parse_signature_header(h: &str) -> Option<Vec<u8>> {
    let enc = h.split("signature=").nth(1)?.split(',').next()?;
    let b64 = percent_encoding::percent_decode_str(enc).decode_utf8().ok()?.replace(' ', "+");
    B64.decode(b64.trim()).ok()
}

/// Verifies an Antom-signed message given its three header values.
pub fn verify_signed(
    key: &RsaVerifier,
    path: &str,
    client_id: &str,
    time: &str,
    sig_header: &str,
    body: &[u8],
) -> bool {
    match parse_signature_header(sig_header) {
        Some(sig) => key.verify(&string_to_sign(path, client_id, time, body), &sig),
        None => false,
    }
}

impl Antom {
    /// Builds the connector from its key texts (PEM or bare base64).
    pub fn new(
        client_id: String,
        private_key: &str,
        provider_public_key: &str,
        key_version: u32,
        settlement_currency: Option<String>,
    ) -> Result<Self, crypto::KeyError> {
        Ok(Antom {
            client_id,
            signer: RsaSigner::from_text(private_key)?,
            provider_key: RsaVerifier::from_text(provider_public_key)?,
            key_version,
            settlement_currency,
        })
    }

    fn path(&self, api: &str) -> String {
        if self.client_id.starts_with("SANDBOX_") {
            format!("/ams/sandbox/api/v1/payments/{api}")
        } else {
            format!("/ams/api/v1/payments/{api}")
        }
    }

    fn signed(&self, api: &str, body: Value) -> WireRequest {
        let path = self.path(api);
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let t = request_time(time::OffsetDateTime::now_utc());
        let sig = self.signer.sign(&string_to_sign(&path, &self.client_id, &t, &body));
        WireRequest {
            method: http::Method::POST,
            path,
            headers: vec![
                ("content-type", "application/json; charset=UTF-8".into()),
                ("client-id", self.client_id.clone()),
                ("request-time", t),
                ("signature", signature_header(self.key_version, &sig)),
            ],
            body: Bytes::from(body),
        }
    }

    /// Checks the response signature; returns the parsed body only when it verifies.
    fn verified(&self, req: &WireRequest, resp: &WireResponse) -> Option<Value> {
        let h = |n: &str| resp.headers.get(n).and_then(|v| v.to_str().ok());
        let (cid, t, sig) = (h("client-id")?, h("response-time")?, h("signature")?);
        if !verify_signed(&self.provider_key, &req.path, cid, t, sig, &resp.body) {
            return None;
        }
        serde_json::from_slice(&resp.body).ok()
    }
}

fn result(v: &Value) -> (&str, &str, &str) {
    let r = |k: &str| v.pointer(&format!("/result/{k}")).and_then(Value::as_str).unwrap_or("");
    (r("resultStatus"), r("resultCode"), r("resultMessage"))
}

fn amount(m: Money) -> Value {
    json!({"currency": m.currency().code(), "value": m.minor().to_string()})
}

fn next_action(v: &Value) -> Option<Value> {
    if let Some(u) = v.get("normalUrl").and_then(Value::as_str) {
        let mut a = json!({"type": "redirect", "url": u});
        if let Some(s) = v.get("schemeUrl").or_else(|| v.get("applinkUrl")).and_then(Value::as_str) {
            a["app_link"] = json!(s);
        }
        return Some(a);
    }
    v.get("schemeUrl")
        .or_else(|| v.get("applinkUrl"))
        .and_then(Value::as_str)
        .map(|u| json!({"type": "app_link", "url": u}))
}

fn payment_state(status: &str, v: &Value) -> Option<ProviderState> {
    Some(match status {
        "SUCCESS" => ProviderState::Succeeded,
        "FAIL" => ProviderState::Failed {
            code: v.get("paymentResultCode").and_then(Value::as_str).unwrap_or("PAYMENT_FAILED").to_string(),
            message: v.get("paymentResultMessage").and_then(Value::as_str).unwrap_or("payment failed").to_string(),
        },
        "PROCESSING" | "PENDING" => ProviderState::RequiresAction,
        "CANCELLED" => ProviderState::Canceled,
        _ => return None,
    })
}

/// Where the payer returns after approving: AlipayHK cannot do without it.
fn return_url<'r>(req: &CreateRequest<'r>) -> Result<&'r str, BuildError> {
    req.return_url.ok_or(BuildError {
        code: "return_url_required",
        message: "AlipayHK needs `return_url` to send the payer back".into(),
        field: Some("return_url"),
    })
}

impl Connector for Antom {
    fn kind(&self) -> &'static str {
        "antom"
    }

    fn account(&self) -> Option<&str> {
        Some(&self.client_id)
    }

    fn expensive_signing(&self) -> bool {
        true
    }

    fn check_create(&self, req: &CreateRequest<'_>) -> Result<(), BuildError> {
        return_url(req).map(drop)
    }

    fn build_create(&self, req: &CreateRequest<'_>) -> Result<WireRequest, BuildError> {
        let pmd = req.payment_method_data;
        let terminal = pmd.and_then(|d| d.get("terminal_type")).and_then(Value::as_str).unwrap_or("WEB");
        let redirect = return_url(req)?;
        let mut env = json!({"terminalType": terminal});
        if let Some(os) = pmd.and_then(|d| d.get("os_type")).and_then(Value::as_str) {
            env["osType"] = json!(os);
        }
        let mut order = json!({
            "referenceOrderId": req.order_id,
            "orderDescription": format!("Order {}", req.order_id),
            "orderAmount": amount(req.money),
        });
        if let Some(c) = req.customer_id {
            order["buyer"] = json!({"referenceBuyerId": c});
        }
        let mut body = json!({
            "productCode": "CASHIER_PAYMENT",
            "paymentRequestId": req.attempt_ref,
            "order": order,
            "paymentAmount": amount(req.money),
            "paymentMethod": {"paymentMethodType": "ALIPAY_HK"},
            "paymentRedirectUrl": redirect,
            "paymentNotifyUrl": req.notify_url,
            "env": env,
        });
        if let Some(s) = &self.settlement_currency {
            body["settlementStrategy"] = json!({"settlementCurrency": s});
        }
        Ok(self.signed("pay", body))
    }

    fn parse_create(&self, req: &WireRequest, resp: &WireResponse) -> CreateOutcome {
        match resp.status {
            200 => {}
            429 => return CreateOutcome::NotProcessed { code: "http_429".into(), message: "rate limited".into() },
            400..=499 => {
                return CreateOutcome::NotProcessed {
                    code: format!("http_{}", resp.status),
                    message: "request rejected".into(),
                }
            }
            s => return CreateOutcome::Ambiguous { code: format!("http_{s}") },
        }
        let Some(v) = self.verified(req, resp) else {
            return CreateOutcome::Ambiguous { code: "response_signature_invalid".into() };
        };
        let (status, code, message) = result(&v);
        let provider_ref = v.get("paymentId").and_then(Value::as_str).filter(|r| !r.is_empty()).map(String::from);
        match (status, provider_ref) {
            // Taken, but naming no payment: which one it is, the status query tells.
            ("S", None) => CreateOutcome::Unnamed { code: "no_payment_id".into() },
            ("U", None) if code == "PAYMENT_IN_PROCESS" => CreateOutcome::Unnamed { code: "no_payment_id".into() },
            ("S", Some(provider_ref)) => CreateOutcome::Accepted(ProviderPayment {
                provider_ref,
                state: ProviderState::Succeeded,
                next_action: None,
                money: None,
            }),
            ("U", Some(provider_ref)) if code == "PAYMENT_IN_PROCESS" => CreateOutcome::Accepted(ProviderPayment {
                provider_ref,
                state: ProviderState::RequiresAction,
                next_action: next_action(&v),
                money: None,
            }),
            (_, provider_ref) => match status {
                "F" if DECLINE_CODES.contains(&code) => {
                    CreateOutcome::Declined { provider_ref, code: code.into(), message: message.into() }
                }
                "F" => CreateOutcome::NotProcessed { code: code.into(), message: message.into() },
                _ => CreateOutcome::Ambiguous { code: if code.is_empty() { "unknown".into() } else { code.into() } },
            },
        }
    }

    fn build_query(&self, q: &QueryRef<'_>) -> Result<WireRequest, BuildError> {
        Ok(self.signed("inquiryPayment", json!({"paymentRequestId": q.attempt_ref})))
    }

    fn parse_query(&self, _q: &QueryRef<'_>, req: &WireRequest, resp: &WireResponse) -> QueryOutcome {
        if resp.status != 200 {
            return QueryOutcome::Unknown { code: format!("http_{}", resp.status) };
        }
        let Some(v) = self.verified(req, resp) else {
            return QueryOutcome::Unknown { code: "response_signature_invalid".into() };
        };
        let (status, code, _) = result(&v);
        match (status, code) {
            ("S", _) => {
                let ps = v.get("paymentStatus").and_then(Value::as_str).unwrap_or("");
                let provider_ref = v.get("paymentId").and_then(Value::as_str).filter(|r| !r.is_empty());
                match (payment_state(ps, &v), provider_ref) {
                    (Some(state), Some(provider_ref)) => QueryOutcome::Found(ProviderPayment {
                        provider_ref: provider_ref.to_string(),
                        state,
                        next_action: None,
                        money: stated_money(
                            v.pointer("/paymentAmount/value").and_then(Value::as_str).and_then(|m| m.parse().ok()),
                            v.pointer("/paymentAmount/currency"),
                        )
                        .ok()
                        .flatten(),
                    }),
                    (Some(_), None) => QueryOutcome::Unknown { code: "no_payment_id".into() },
                    (None, _) => QueryOutcome::Unknown { code: format!("payment_status_{ps}") },
                }
            }
            ("F", "ORDER_NOT_EXIST") => QueryOutcome::NotFound { authoritative: true },
            (_, c) => QueryOutcome::Unknown { code: c.to_string() },
        }
    }

    fn build_cancel(&self, attempt_ref: &str, _provider_ref: &str) -> Result<WireRequest, BuildError> {
        Ok(self.signed("cancel", json!({"paymentRequestId": attempt_ref})))
    }

    fn parse_cancel(&self, req: &WireRequest, resp: &WireResponse) -> CancelOutcome {
        if resp.status != 200 {
            return CancelOutcome::Unknown { code: format!("http_{}", resp.status) };
        }
        let Some(v) = self.verified(req, resp) else {
            return CancelOutcome::Unknown { code: "response_signature_invalid".into() };
        };
        match result(&v) {
            ("S", _, _) => CancelOutcome::Canceled,
            ("F", c, m) => CancelOutcome::Refused { code: c.into(), message: m.into() },
            (_, c, _) => CancelOutcome::Unknown { code: c.into() },
        }
    }

    fn build_refund(&self, r: &RefundRequest<'_>) -> Result<WireRequest, BuildError> {
        let mut body = json!({
            "refundRequestId": r.refund_id,
            "paymentId": r.provider_ref,
            "refundAmount": amount(r.amount),
            "refundNotifyUrl": r.notify_url,
        });
        if let Some(reason) = r.reason {
            body["refundReason"] = json!(reason);
        }
        Ok(self.signed("refund", body))
    }

    fn parse_refund(&self, req: &WireRequest, resp: &WireResponse) -> RefundOutcome {
        if resp.status != 200 {
            return if (400..500).contains(&resp.status) {
                RefundOutcome::NotProcessed { code: format!("http_{}", resp.status), message: "refund rejected".into() }
            } else {
                RefundOutcome::Ambiguous { code: format!("http_{}", resp.status) }
            };
        }
        let Some(v) = self.verified(req, resp) else {
            return RefundOutcome::Ambiguous { code: "response_signature_invalid".into() };
        };
        let id = v.get("refundId").and_then(Value::as_str).map(String::from);
        match result(&v) {
            ("S", _, _) => RefundOutcome::Accepted { provider_refund_ref: id, state: RefundState::Succeeded },
            ("U", "REFUND_IN_PROCESS", _) => {
                RefundOutcome::Accepted { provider_refund_ref: id, state: RefundState::Pending }
            }
            ("F", c, m) => RefundOutcome::NotProcessed { code: c.into(), message: m.into() },
            (_, c, _) => RefundOutcome::Ambiguous { code: c.into() },
        }
    }

    fn build_refund_query(&self, q: &RefundQuery<'_>) -> Result<WireRequest, BuildError> {
        Ok(self.signed("inquiryRefund", json!({"refundRequestId": q.refund_id})))
    }

    fn parse_refund_query(&self, _q: &RefundQuery<'_>, req: &WireRequest, resp: &WireResponse) -> RefundQueryOutcome {
        if resp.status != 200 {
            return RefundQueryOutcome::Unknown { code: format!("http_{}", resp.status) };
        }
        let Some(v) = self.verified(req, resp) else {
            return RefundQueryOutcome::Unknown { code: "response_signature_invalid".into() };
        };
        match result(&v) {
            ("S", _, _) => {
                let state = match v.get("refundStatus").and_then(Value::as_str) {
                    Some("SUCCESS") => RefundState::Succeeded,
                    Some("FAIL") => {
                        RefundState::Failed { code: "REFUND_FAILED".into(), message: "refund failed at Antom".into() }
                    }
                    _ => RefundState::Pending,
                };
                RefundQueryOutcome::Found {
                    provider_refund_ref: v.get("refundId").and_then(Value::as_str).map(String::from),
                    state,
                }
            }
            ("F", "REFUND_NOT_EXIST", _) => RefundQueryOutcome::NotFound,
            (_, c, _) => RefundQueryOutcome::Unknown { code: c.into() },
        }
    }

    fn verify_webhook(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        body: &[u8],
        _now: i64,
    ) -> Result<WebhookEvent, WebhookError> {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let (Some(cid), Some(t), Some(sig)) = (h("client-id"), h("request-time"), h("signature")) else {
            return Err(WebhookError::MissingSignature);
        };
        if !verify_signed(&self.provider_key, path, cid, t, sig, body) {
            return Err(WebhookError::BadSignature);
        }
        // Antom notifies under the merchant's own Client-Id: another one is about another
        // merchant account.
        if cid != self.client_id {
            return Err(WebhookError::OtherAccount);
        }
        let v: Value = serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
        let notify_type = v.get("notifyType").and_then(Value::as_str).unwrap_or("").to_string();
        let (status, code, message) = result(&v);
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
        match notify_type.as_str() {
            "PAYMENT_RESULT" => {
                let provider_ref = s("paymentId").ok_or_else(|| WebhookError::Malformed("no paymentId".into()))?;
                let state = match status {
                    "S" => ProviderState::Succeeded,
                    "F" => ProviderState::Failed { code: code.into(), message: message.into() },
                    _ => ProviderState::RequiresAction,
                };
                Ok(WebhookEvent {
                    event_id: format!("PAYMENT_RESULT:{provider_ref}:{status}"),
                    kind: WebhookKind::Payment {
                        provider_ref,
                        attempt_ref: s("paymentRequestId"),
                        state,
                        money: stated_money(
                            v.pointer("/paymentAmount/value").and_then(Value::as_str).and_then(|m| m.parse().ok()),
                            v.pointer("/paymentAmount/currency"),
                        )?,
                    },
                })
            }
            "REFUND_RESULT" => {
                let state = match v.get("refundStatus").and_then(Value::as_str) {
                    Some("SUCCESS") => RefundState::Succeeded,
                    Some("FAIL") => RefundState::Failed { code: code.into(), message: message.into() },
                    _ => RefundState::Pending,
                };
                let rid = s("refundRequestId");
                Ok(WebhookEvent {
                    event_id: format!(
                        "REFUND_RESULT:{}:{}",
                        rid.clone().unwrap_or_default(),
                        v.get("refundStatus").and_then(Value::as_str).unwrap_or("")
                    ),
                    kind: WebhookKind::Refund { refund_id: rid, provider_refund_ref: s("refundId"), state },
                })
            }
            other => Ok(WebhookEvent {
                event_id: format!("{other}:{}", crypto::sha256_hex(body)),
                kind: WebhookKind::Ignored { event_type: other.into() },
            }),
        }
    }

    fn webhook_ack(&self) -> (&'static str, Bytes) {
        (
            "application/json",
            Bytes::from_static(br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Currency;

    const MERCHANT_PRIV: &str = include_str!("../../sandbox/keys/antom_merchant_private.pem");
    const MERCHANT_PUB: &str = include_str!("../../sandbox/keys/antom_merchant_public.pem");
    const PROVIDER_PRIV: &str = include_str!("../../sandbox/keys/antom_provider_private.pem");
    const PROVIDER_PUB: &str = include_str!("../../sandbox/keys/antom_provider_public.pem");

    fn conn() -> Antom {
        Antom::new("SANDBOX_TEST".into(), MERCHANT_PRIV, PROVIDER_PUB, 1, None).unwrap()
    }

    #[test]
    fn signs_requests_the_antom_way() {
        let md = BTreeMap::new();
        let req = CreateRequest {
            payment_id: "pay_1",
            attempt_ref: "pay_1-a1",
            money: Money::new(10000, Currency::parse("HKD").unwrap()).unwrap(),
            method: Method::AlipayHk,
            order_id: "o-1",
            customer_id: Some("c-1"),
            customer_email: None,
            payment_method_data: None,
            return_url: Some("https://shop/return"),
            metadata: &md,
            notify_url: "https://pm/v1/webhooks/antom",
        };
        let w = conn().build_create(&req).unwrap();
        assert_eq!(w.path, "/ams/sandbox/api/v1/payments/pay");
        let v: Value = serde_json::from_slice(&w.body).unwrap();
        assert_eq!(v["paymentAmount"], json!({"currency": "HKD", "value": "10000"}));
        let get = |n: &str| w.headers.iter().find(|(k, _)| *k == n).unwrap().1.clone();
        let merchant = RsaVerifier::from_text(MERCHANT_PUB).unwrap();
        assert!(verify_signed(&merchant, &w.path, "SANDBOX_TEST", &get("request-time"), &get("signature"), &w.body));
        assert!(!verify_signed(
            &merchant,
            "/ams/api/v1/payments/pay",
            "SANDBOX_TEST",
            &get("request-time"),
            &get("signature"),
            &w.body
        ));
        assert!(get("signature").starts_with("algorithm=RSA256,keyVersion=1,signature="));
    }

    fn signed_response(path: &str, body: &str) -> WireResponse {
        let signer = RsaSigner::from_text(PROVIDER_PRIV).unwrap();
        let t = "2026-01-01T00:00:00+08:00";
        let sig = signer.sign(&string_to_sign(path, "SANDBOX_TEST", t, body.as_bytes()));
        let mut h = http::HeaderMap::new();
        h.insert("client-id", "SANDBOX_TEST".parse().unwrap());
        h.insert("response-time", t.parse().unwrap());
        h.insert("signature", signature_header(1, &sig).parse().unwrap());
        WireResponse { status: 200, headers: h, body: Bytes::from(body.to_string()) }
    }

    #[test]
    fn verifies_responses_and_classifies() {
        let c = conn();
        let q = QueryRef { attempt_ref: "pay_1-a1", provider_ref: None, since_send_ms: 0 };
        let w = c.build_query(&q).unwrap();
        let ok = signed_response(
            &w.path,
            r#"{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"paymentStatus":"SUCCESS","paymentId":"2026x"}"#,
        );
        assert!(matches!(c.parse_query(&q, &w, &ok), QueryOutcome::Found(p) if p.state == ProviderState::Succeeded));
        let missing = signed_response(&w.path, r#"{"result":{"resultStatus":"F","resultCode":"ORDER_NOT_EXIST"}}"#);
        assert_eq!(c.parse_query(&q, &w, &missing), QueryOutcome::NotFound { authoritative: true });
        let mut forged = ok.clone();
        forged.body = Bytes::from_static(br#"{"result":{"resultStatus":"S"},"paymentStatus":"FAIL"}"#);
        assert!(matches!(c.parse_query(&q, &w, &forged), QueryOutcome::Unknown { .. }));
    }

    #[test]
    fn an_answer_naming_no_payment_is_not_taken_as_one() {
        let c = conn();
        let q = QueryRef { attempt_ref: "pay_1-a1", provider_ref: None, since_send_ms: 0 };
        let w = c.build_query(&q).unwrap();
        let found = signed_response(
            &w.path,
            r#"{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"paymentStatus":"SUCCESS","paymentId":"2026x","paymentAmount":{"currency":"HKD","value":"1000"}}"#,
        );
        let hkd = Currency::parse("HKD").unwrap();
        assert!(
            matches!(c.parse_query(&q, &w, &found), QueryOutcome::Found(p) if p.money == Some(Money::new(1000, hkd).unwrap()))
        );
        let nameless = signed_response(
            &w.path,
            r#"{"result":{"resultStatus":"S","resultCode":"SUCCESS"},"paymentStatus":"SUCCESS"}"#,
        );
        assert_eq!(c.parse_query(&q, &w, &nameless), QueryOutcome::Unknown { code: "no_payment_id".into() });
        // A create taken but naming no payment: the status query is asked which one it is.
        let md = BTreeMap::new();
        let req = CreateRequest {
            payment_id: "pay_1",
            attempt_ref: "pay_1-a1",
            money: Money::new(1000, hkd).unwrap(),
            method: Method::AlipayHk,
            order_id: "o-1",
            customer_id: None,
            customer_email: None,
            payment_method_data: None,
            return_url: Some("https://shop/return"),
            metadata: &md,
            notify_url: "https://pm/v1/webhooks/antom",
        };
        let cw = c.build_create(&req).unwrap();
        let in_process = signed_response(
            &cw.path,
            r#"{"result":{"resultStatus":"U","resultCode":"PAYMENT_IN_PROCESS"},"normalUrl":"https://pay/x"}"#,
        );
        assert_eq!(c.parse_create(&cw, &in_process), CreateOutcome::Unnamed { code: "no_payment_id".into() });
    }
}
