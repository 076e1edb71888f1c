//! The Antom API handlers (`pay`, `inquiryPayment`, `cancel`, `refund`, `inquiryRefund`):
//! plain functions over the locked simulator state that return the answer body (business
//! errors as `result.resultStatus: F`) and queue the notifies a change causes.

use super::model::{
    inquiry_json, new_numeric_id, now_hkt, outcome, refund_inquiry_json, refund_notify, success, Amount, PayStatus,
    Payment, RefundRec,
};
use super::{AntomSim, Notify, State};
use crate::sandbox::pages;
use crate::sandbox::sim::Stats;
use serde_json::{json, Value};

pub(super) fn param_illegal(message: &str) -> Value {
    outcome("PARAM_ILLEGAL", "F", message)
}

fn not_found() -> Value {
    outcome("ORDER_NOT_EXIST", "F", "The order does not exist.")
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Reads a request id (`paymentRequestId`, `refundRequestId`): 1 to 64 characters.
fn request_id<'a>(v: &'a Value, k: &str) -> Result<&'a str, Value> {
    match str_field(v, k) {
        Some(s) if s.chars().count() <= 64 => Ok(s),
        _ => Err(param_illegal(&format!("{k} is required (a string of 1 to 64 characters)"))),
    }
}

/// An optional callback URL: absolute http(s).
fn url_field(v: &Value, k: &str) -> Result<Option<String>, Value> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.starts_with("http://") || s.starts_with("https://") => {
            match s.parse::<http::Uri>() {
                Ok(_) => Ok(Some(s.clone())),
                Err(_) => Err(param_illegal(&format!("{k} is not a valid URL"))),
            }
        }
        Some(_) => Err(param_illegal(&format!("{k} must be an absolute http(s) URL"))),
    }
}

/// The checked parts of a `pay` request.
struct PayInput {
    amount: Amount,
    method_type: String,
    redirect_url: String,
    notify_url: Option<String>,
    /// `paymentExpiryTime` in Unix seconds, if the merchant set one.
    expires: Option<i64>,
}

/// How long a cashier payment waits for the payer when the merchant sets no
/// `paymentExpiryTime`: Antom's default for AlipayHK (and most wallets) is 14 minutes.
pub(super) const DEFAULT_EXPIRY_SECS: i64 = 14 * 60;

fn parse_pay(v: &Value) -> Result<PayInput, Value> {
    if str_field(v, "productCode") != Some("CASHIER_PAYMENT") {
        return Err(param_illegal("productCode must be CASHIER_PAYMENT"));
    }
    let amount = Amount::parse(v.get("paymentAmount"), "paymentAmount").map_err(|m| param_illegal(&m))?;
    let method_type = v
        .pointer("/paymentMethod/paymentMethodType")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| param_illegal("paymentMethod.paymentMethodType is required"))?
        .to_string();
    let order = v.get("order").filter(|o| o.is_object()).ok_or_else(|| param_illegal("order is required"))?;
    for k in ["referenceOrderId", "orderDescription"] {
        if str_field(order, k).is_none() {
            return Err(param_illegal(&format!("order.{k} is required")));
        }
    }
    if order.get("orderAmount").is_some() {
        Amount::parse(order.get("orderAmount"), "order.orderAmount").map_err(|m| param_illegal(&m))?;
    }
    match v.pointer("/env/terminalType").and_then(Value::as_str) {
        Some("WEB" | "WAP" | "APP" | "MINI_APP") => {}
        _ => return Err(param_illegal("env.terminalType must be one of WEB, WAP, APP, MINI_APP")),
    }
    let redirect_url =
        url_field(v, "paymentRedirectUrl")?.ok_or_else(|| param_illegal("paymentRedirectUrl is required"))?;
    let notify_url = url_field(v, "paymentNotifyUrl")?;
    let expires = match v.get("paymentExpiryTime") {
        None => None,
        Some(t) => Some(
            t.as_str()
                .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
                .ok_or_else(|| param_illegal("paymentExpiryTime must be an ISO 8601 time with an offset"))?
                .unix_timestamp(),
        ),
    };
    Ok(PayInput { amount, method_type, redirect_url, notify_url, expires })
}

impl AntomSim {
    pub(super) fn pay(&self, st: &mut State, v: &Value, _: &mut Vec<Notify>) -> Value {
        let prid = match request_id(v, "paymentRequestId") {
            Ok(p) => p,
            Err(e) => return e,
        };
        if let Some(p) = st.by_request.get(prid).and_then(|id| st.payments.get(id)) {
            return if p.request == *v {
                p.response.clone()
            } else {
                outcome(
                    "REPEAT_REQ_INCONSISTENT",
                    "F",
                    "The paymentRequestId was used before with a different request.",
                )
            };
        }
        let input = match parse_pay(v) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let payment_id = new_numeric_id();
        let (created, create_time) = now_hkt();
        let normal_url = format!("{}/pay/{payment_id}", self.setup.base_url);
        let scheme_url =
            pages::with_query("alipayhk://platformapi/startapp", &[("appId", "20000067"), ("url", &normal_url)]);
        let response = json!({
            "result": {"resultCode": "PAYMENT_IN_PROCESS", "resultStatus": "U", "resultMessage": "payment in process"},
            "paymentRequestId": prid,
            "paymentId": payment_id,
            "paymentAmount": input.amount.json(),
            "paymentCreateTime": create_time,
            "normalUrl": normal_url,
            "schemeUrl": scheme_url,
            "applinkUrl": format!("{normal_url}?via=applink"),
            "appIdentifier": "hk.alipay.wallet",
        });
        st.payments.insert(
            payment_id.clone(),
            Box::new(Payment {
                payment_id: payment_id.clone(),
                payment_request_id: prid.to_string(),
                amount: input.amount,
                status: PayStatus::Processing,
                method_type: input.method_type,
                created,
                expires: input.expires.unwrap_or(created + DEFAULT_EXPIRY_SECS),
                create_time,
                payment_time: None,
                cancel_time: None,
                failure: None,
                notify_url: input.notify_url,
                redirect_url: input.redirect_url,
                request: v.clone(),
                response: response.clone(),
                refunded: 0,
                refund_ids: Vec::new(),
            }),
        );
        st.by_request.insert(prid.to_string(), payment_id.clone());
        st.order.push(payment_id);
        Stats::bump(&self.stats.payments_created);
        response
    }

    /// The paymentId a request names by `paymentId` and/or `paymentRequestId`.
    pub(super) fn find(st: &State, v: &Value) -> Result<String, Value> {
        let (pid, prid) = (str_field(v, "paymentId"), str_field(v, "paymentRequestId"));
        let found = match (pid, prid) {
            (None, None) => return Err(param_illegal("paymentId or paymentRequestId is required.")),
            (Some(pid), _) => st.payments.get(pid),
            (None, Some(r)) => st.by_request.get(r).and_then(|id| st.payments.get(id)),
        };
        found
            .filter(|p| prid.is_none_or(|r| p.payment_request_id == r))
            .map(|p| p.payment_id.clone())
            .ok_or_else(not_found)
    }

    pub(super) fn inquiry_payment(&self, st: &mut State, v: &Value, _: &mut Vec<Notify>) -> Value {
        let id = match Self::find(st, v) {
            Ok(id) => id,
            Err(e) => return e,
        };
        match st.payments.get(&id) {
            Some(p) => {
                let refunds: Vec<&RefundRec> =
                    p.refund_ids.iter().filter_map(|r| st.refunds.get(r).map(Box::as_ref)).collect();
                inquiry_json(p, &refunds)
            }
            None => not_found(),
        }
    }

    pub(super) fn cancel(&self, st: &mut State, v: &Value, _: &mut Vec<Notify>) -> Value {
        let id = match Self::find(st, v) {
            Ok(id) => id,
            Err(e) => return e,
        };
        let Some(p) = st.payments.get_mut(&id) else { return not_found() };
        // A wallet payment can be cancelled until 00:15 (UTC+8) of the day after it was paid;
        // a paid one is then refunded to the payer in full. Not once it has refunds.
        let paid_cancellable = p.status == PayStatus::Success
            && p.payment_time.as_deref().and_then(unix_of).is_some_and(|paid| now_hkt().0 < cancel_deadline(paid));
        match p.status {
            PayStatus::Processing => {
                p.status = PayStatus::Cancelled;
                p.cancel_time = Some(now_hkt().1);
            }
            PayStatus::Cancelled => {}
            PayStatus::Success if p.refunded > 0 => {
                return outcome("PROCESS_FAIL", "F", "The payment has been refunded and can no longer be cancelled.")
            }
            PayStatus::Success if paid_cancellable => {
                p.status = PayStatus::Cancelled;
                p.cancel_time = Some(now_hkt().1);
                // The payer gets it all back.
                p.refunded = p.amount.value;
            }
            PayStatus::Success => return outcome(
                "ORDER_STATUS_INVALID",
                "F",
                "The cancellation period of the payment (until 00:15 UTC+8 of the day after it was paid) has passed.",
            ),
            s => {
                return outcome(
                    "ORDER_STATUS_INVALID",
                    "F",
                    &format!("The payment is {}; it cannot be cancelled.", s.as_str()),
                )
            }
        }
        json!({
            "result": success(),
            "paymentId": p.payment_id,
            "paymentRequestId": p.payment_request_id,
            "cancelTime": p.cancel_time,
        })
    }

    pub(super) fn refund(&self, st: &mut State, v: &Value, notifies: &mut Vec<Notify>) -> Value {
        let rrid = match request_id(v, "refundRequestId") {
            Ok(r) => r,
            Err(e) => return e,
        };
        if let Some(r) = st.refunds_by_request.get(rrid).and_then(|id| st.refunds.get(id)) {
            return if r.request == *v {
                r.response.clone()
            } else {
                outcome("REPEAT_REQ_INCONSISTENT", "F", "The refundRequestId was used before with a different request.")
            };
        }
        let Some(pid) = str_field(v, "paymentId") else { return param_illegal("paymentId is required.") };
        let amount = match Amount::parse(v.get("refundAmount"), "refundAmount") {
            Ok(a) => a,
            Err(m) => return param_illegal(&m),
        };
        let notify_url = match url_field(v, "refundNotifyUrl") {
            Ok(u) => u,
            Err(e) => return e,
        };
        let Some(p) = st.payments.get_mut(pid) else { return not_found() };
        if p.status != PayStatus::Success {
            return outcome(
                "ORDER_STATUS_INVALID",
                "F",
                &format!("The payment is {}; only a SUCCESS payment can be refunded.", p.status.as_str()),
            );
        }
        if amount.currency != p.amount.currency {
            return param_illegal(&format!(
                "refundAmount.currency must be the payment currency {}.",
                p.amount.currency
            ));
        }
        if p.refunded + amount.value > p.amount.value {
            return outcome("REFUND_AMOUNT_EXCEED", "F", "The total refund amount exceeds the payment amount.");
        }
        let refund_id = new_numeric_id();
        let (_, time) = now_hkt();
        let response = json!({
            "result": success(),
            "refundRequestId": rrid,
            "refundId": refund_id,
            "paymentId": pid,
            "refundAmount": amount.json(),
            "refundTime": time,
        });
        p.refunded += amount.value;
        p.refund_ids.push(refund_id.clone());
        let rec = RefundRec {
            refund_id: refund_id.clone(),
            refund_request_id: rrid.to_string(),
            payment_id: pid.to_string(),
            amount,
            time,
            request: v.clone(),
            response: response.clone(),
        };
        if let Some(url) = notify_url {
            notifies.push((url, refund_notify(&rec)));
        }
        st.refunds_by_request.insert(rrid.to_string(), refund_id.clone());
        st.refunds.insert(refund_id, Box::new(rec));
        Stats::bump(&self.stats.refunds);
        response
    }

    pub(super) fn inquiry_refund(&self, st: &mut State, v: &Value, _: &mut Vec<Notify>) -> Value {
        let rec = match (str_field(v, "refundId"), str_field(v, "refundRequestId")) {
            (None, None) => return param_illegal("refundId or refundRequestId is required."),
            (Some(id), _) => st.refunds.get(id),
            (None, Some(r)) => st.refunds_by_request.get(r).and_then(|id| st.refunds.get(id)),
        };
        rec.map(|r| refund_inquiry_json(r))
            .unwrap_or_else(|| outcome("REFUND_NOT_EXIST", "F", "The refund does not exist."))
    }
}

/// Unix time of an Antom timestamp (`2026-11-27T08:00:00+08:00`).
fn unix_of(t: &str) -> Option<i64> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

/// Until when a payment paid at `paid` (Unix time) can be cancelled: 00:15 UTC+8 the next day.
fn cancel_deadline(paid: i64) -> i64 {
    const HKT: i64 = 8 * 3600;
    let day = (paid + HKT).div_euclid(86_400);
    (day + 1) * 86_400 + 15 * 60 - HKT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pay_body() -> Value {
        json!({
            "productCode": "CASHIER_PAYMENT",
            "paymentRequestId": "PAY-1",
            "order": {"referenceOrderId": "O-1", "orderDescription": "d", "orderAmount": {"currency": "HKD", "value": "1000"}},
            "paymentAmount": {"currency": "HKD", "value": "1000"},
            "paymentMethod": {"paymentMethodType": "ALIPAY_HK"},
            "paymentRedirectUrl": "https://merchant.example/return",
            "paymentNotifyUrl": "https://merchant.example/notify",
            "env": {"terminalType": "WAP", "osType": "IOS"},
        })
    }

    #[test]
    fn pay_input_is_checked() {
        assert!(parse_pay(&pay_body()).is_ok());
        let code = |v: Value| parse_pay(&v).err().map(|e| e["result"]["resultCode"].clone());
        let mut v = pay_body();
        v["paymentAmount"]["value"] = json!(1000);
        assert_eq!(code(v), Some(json!("PARAM_ILLEGAL")));
        let mut v = pay_body();
        v["env"] = json!({});
        assert_eq!(code(v), Some(json!("PARAM_ILLEGAL")));
        let mut v = pay_body();
        v["paymentNotifyUrl"] = json!("ftp://x");
        assert_eq!(code(v), Some(json!("PARAM_ILLEGAL")));
        let mut v = pay_body();
        v.as_object_mut().unwrap().remove("paymentRedirectUrl");
        assert_eq!(code(v), Some(json!("PARAM_ILLEGAL")));
        let mut v = pay_body();
        v["paymentExpiryTime"] = json!("2026-11-27T12:01:01+08:00");
        assert_eq!(parse_pay(&v).ok().and_then(|p| p.expires), Some(1_795_752_061));
        v["paymentExpiryTime"] = json!("tomorrow");
        assert_eq!(code(v), Some(json!("PARAM_ILLEGAL")));
        assert!(request_id(&json!({"paymentRequestId": "x".repeat(65)}), "paymentRequestId").is_err());
    }

    #[test]
    fn a_paid_payment_is_cancellable_until_a_quarter_past_midnight_hong_kong_time_next_day() {
        let at = |t: &str| unix_of(t).unwrap();
        assert_eq!(cancel_deadline(at("2026-11-27T08:00:00+08:00")), at("2026-11-28T00:15:00+08:00"));
        assert_eq!(cancel_deadline(at("2026-11-27T23:59:59+08:00")), at("2026-11-28T00:15:00+08:00"));
        // Paid at 00:10 HKT: the day is the 27th in Hong Kong (the 26th in UTC).
        assert_eq!(cancel_deadline(at("2026-11-26T16:10:00Z")), at("2026-11-28T00:15:00+08:00"));
    }
}
