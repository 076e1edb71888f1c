//! The Antom (AlipayHK) records the simulator keeps, the checks on request amounts, and the
//! JSON bodies it answers and notifies with (amounts as strings of minor units, times as
//! ISO-8601 with the +08:00 offset, `result{resultCode,resultStatus,resultMessage}`).

use crate::domain::Currency;
use serde_json::{json, Value};

/// `{"currency": "HKD", "value": "1000"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Amount {
    pub currency: String,
    pub value: i64,
}

impl Amount {
    /// Reads an Antom amount, refusing numbers, non-digits and non-positive values.
    pub(crate) fn parse(v: Option<&Value>, field: &str) -> Result<Amount, String> {
        let v = v.filter(|v| !v.is_null()).ok_or_else(|| format!("{field} is required"))?;
        let currency =
            v.get("currency").and_then(Value::as_str).ok_or_else(|| format!("{field}.currency is required"))?;
        if Currency::parse(currency).is_err() {
            return Err(format!("{field}.currency `{currency}` is not an upper-case ISO 4217 code"));
        }
        let value = match v.get("value") {
            Some(Value::String(s)) => s,
            Some(other) => return Err(format!("{field}.value must be a string of minor units, got {other}")),
            None => return Err(format!("{field}.value is required")),
        };
        let digits = !value.is_empty() && value.len() <= 16 && value.bytes().all(|b| b.is_ascii_digit());
        match value.parse::<i64>() {
            Ok(n) if digits && n > 0 => Ok(Amount { currency: currency.to_string(), value: n }),
            _ => Err(format!("{field}.value must be a positive whole number of minor units, got \"{value}\"")),
        }
    }

    pub(crate) fn json(&self) -> Value {
        json!({"currency": self.currency, "value": self.value.to_string()})
    }
}

/// `paymentStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PayStatus {
    Processing,
    Success,
    Fail,
    Cancelled,
}

impl PayStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PayStatus::Processing => "PROCESSING",
            PayStatus::Success => "SUCCESS",
            PayStatus::Fail => "FAIL",
            PayStatus::Cancelled => "CANCELLED",
        }
    }
}

/// A cashier payment.
pub(crate) struct Payment {
    pub payment_id: String,
    pub payment_request_id: String,
    pub amount: Amount,
    pub status: PayStatus,
    pub method_type: String,
    pub created: i64,
    /// Unix seconds after which a payment the payer has not completed is closed.
    pub expires: i64,
    pub create_time: String,
    pub payment_time: Option<String>,
    pub cancel_time: Option<String>,
    /// resultCode and message of a failed payment.
    pub failure: Option<(String, String)>,
    pub notify_url: Option<String>,
    pub redirect_url: String,
    /// The pay request body, for `REPEAT_REQ_INCONSISTENT`.
    pub request: Value,
    /// The pay response body, replayed for a repeated paymentRequestId.
    pub response: Value,
    pub refunded: i64,
    pub refund_ids: Vec<String>,
}

/// A refund.
pub(crate) struct RefundRec {
    pub refund_id: String,
    pub refund_request_id: String,
    pub payment_id: String,
    pub amount: Amount,
    pub time: String,
    pub request: Value,
    pub response: Value,
}

/// `{"resultCode", "resultStatus", "resultMessage"}`.
pub(crate) fn result(code: &str, status: &str, message: &str) -> Value {
    json!({"resultCode": code, "resultStatus": status, "resultMessage": message})
}

/// A body with only a `result`.
pub(crate) fn outcome(code: &str, status: &str, message: &str) -> Value {
    json!({"result": result(code, status, message)})
}

pub(crate) fn success() -> Value {
    result("SUCCESS", "S", "success")
}

/// Now, as Antom writes times: `2026-11-25T19:40:00+08:00`.
pub(crate) fn now_hkt() -> (i64, String) {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]+08:00");
    let t = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+8));
    (t.unix_timestamp(), t.format(&f).unwrap_or_default())
}

/// A 22-digit id: the HKT time to the second and 8 random digits (`2026112519400012345678`).
pub(crate) fn new_numeric_id() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let f = time::macros::format_description!("[year][month][day][hour][minute][second]");
    let t = time::OffsetDateTime::now_utc().to_offset(time::macros::offset!(+8));
    let mut id = t.format(&f).unwrap_or_default();
    let mut bytes = [0u8; 8];
    // Without OS randomness the ids are still unique enough for a simulator (time-based).
    let _ = SystemRandom::new().fill(&mut bytes);
    id.extend(bytes.iter().map(|b| char::from(b'0' + b % 10)));
    id
}

fn result_of(p: &Payment) -> (String, String) {
    match p.status {
        PayStatus::Success => ("SUCCESS".into(), "success".into()),
        PayStatus::Processing => ("PAYMENT_IN_PROCESS".into(), "payment in process".into()),
        PayStatus::Cancelled => ("ORDER_IS_CLOSED".into(), "The order is closed.".into()),
        PayStatus::Fail => p.failure.clone().unwrap_or_else(|| ("PAYMENT_FAILED".into(), "payment failed".into())),
    }
}

/// The `inquiryPayment` answer.
pub(crate) fn inquiry_json(p: &Payment, refunds: &[&RefundRec]) -> Value {
    let (code, message) = result_of(p);
    let mut v = json!({
        "result": success(),
        "paymentStatus": p.status.as_str(),
        "paymentResultCode": code,
        "paymentResultMessage": message,
        "paymentRequestId": p.payment_request_id,
        "paymentId": p.payment_id,
        "paymentAmount": p.amount.json(),
        "paymentCreateTime": p.create_time,
        "paymentMethodType": p.method_type,
    });
    if let Some(t) = &p.payment_time {
        v["paymentTime"] = json!(t);
        v["actualPaymentAmount"] = p.amount.json();
    }
    if !refunds.is_empty() {
        v["transactions"] = refunds
            .iter()
            .map(|r| {
                json!({
                    "transactionType": "REFUND",
                    "transactionStatus": "SUCCESS",
                    "transactionRequestId": r.refund_request_id,
                    "transactionId": r.refund_id,
                    "transactionAmount": r.amount.json(),
                    "transactionTime": r.time,
                    "transactionResult": success(),
                })
            })
            .collect();
    }
    v
}

/// The PAYMENT_RESULT notify body.
pub(crate) fn payment_notify(p: &Payment) -> Value {
    let (code, message) = result_of(p);
    let status = if p.status == PayStatus::Success { "S" } else { "F" };
    let mut v = json!({
        "notifyType": "PAYMENT_RESULT",
        "result": result(&code, status, &message),
        "paymentRequestId": p.payment_request_id,
        "paymentId": p.payment_id,
        "paymentAmount": p.amount.json(),
        "paymentCreateTime": p.create_time,
        "paymentMethodType": p.method_type,
    });
    if let Some(t) = &p.payment_time {
        v["paymentTime"] = json!(t);
    }
    v
}

/// The REFUND_RESULT notify body.
pub(crate) fn refund_notify(r: &RefundRec) -> Value {
    json!({
        "notifyType": "REFUND_RESULT",
        "result": success(),
        "refundStatus": "SUCCESS",
        "refundRequestId": r.refund_request_id,
        "refundId": r.refund_id,
        "paymentId": r.payment_id,
        "refundAmount": r.amount.json(),
        "refundTime": r.time,
    })
}

/// The `inquiryRefund` answer.
pub(crate) fn refund_inquiry_json(r: &RefundRec) -> Value {
    json!({
        "result": success(),
        "refundId": r.refund_id,
        "refundRequestId": r.refund_request_id,
        "paymentId": r.payment_id,
        "refundAmount": r.amount.json(),
        "refundStatus": "SUCCESS",
        "refundTime": r.time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_strings_of_minor_units() {
        let ok = Amount::parse(Some(&json!({"currency": "HKD", "value": "1000"})), "paymentAmount").unwrap();
        assert_eq!(ok, Amount { currency: "HKD".into(), value: 1000 });
        assert_eq!(ok.json(), json!({"currency": "HKD", "value": "1000"}));
        for bad in [
            json!({"currency": "HKD", "value": 1000}),
            json!({"currency": "HKD", "value": "0"}),
            json!({"currency": "HKD", "value": "-5"}),
            json!({"currency": "HKD", "value": "10.50"}),
            json!({"currency": "HKD", "value": ""}),
            json!({"currency": "hkd", "value": "1"}),
            json!({"value": "1"}),
        ] {
            assert!(Amount::parse(Some(&bad), "paymentAmount").is_err(), "{bad}");
        }
        assert!(Amount::parse(None, "x").unwrap_err().contains("x is required"));
    }

    #[test]
    fn ids_and_times_have_antom_shapes() {
        let id = new_numeric_id();
        assert_eq!(id.len(), 22);
        assert!(id.bytes().all(|b| b.is_ascii_digit()));
        let (_, t) = now_hkt();
        assert!(t.ends_with("+08:00") && t.len() == 25, "{t}");
    }
}
