//! Antom (Alipay+ AMS) simulator for AlipayHK cashier payments, compatible with
//! `global-open-sdk-python` pointed at it: `pay`, `inquiryPayment`, `cancel`, `refund` and
//! `inquiryRefund` under `/ams/api/v1/payments/` and `/ams/sandbox/api/v1/payments/`.
//!
//! Every request must carry this instance's `client-id` and an RSA256 `signature` by the
//! merchant key over `"POST <path>\n<client-id>.<request-time>.<body>"`. Every answer is
//! HTTP 200 (business errors in `result`), signed with the provider key over the same shape
//! with `response-time`, and its header names go on the wire in lower case, as the Python SDK
//! requires. The payer approves or declines on the `normalUrl` page or through the control
//! API; the result is notified (signed PAYMENT_RESULT) to `paymentNotifyUrl`.

mod model;

use crate::connector::antom::{signature_header, string_to_sign, verify_signed};
use crate::crypto::{RsaSigner, RsaVerifier};
use crate::sandbox::callbacks::{Ack, Callback, Dispatcher};
use crate::sandbox::faults::{FaultGate, Op};
use crate::sandbox::http::{match_path, Reply, Request, Response};
use crate::sandbox::pages;
use crate::sandbox::sim::{ActionError, Simulator, Stats};
use bytes::Bytes;
use model::{
    inquiry_json, new_numeric_id, now_hkt, outcome, payment_notify, refund_inquiry_json, refund_notify, success,
    Amount, PayStatus, Payment, RefundRec,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// API path prefixes the simulator answers (the SDK uses the second for `SANDBOX_` clients).
const PREFIXES: &[&str] = &["/ams/api/v1/payments/", "/ams/sandbox/api/v1/payments/"];

/// What the sandbox needs to run one Antom instance.
pub(crate) struct AntomSetup {
    pub name: String,
    /// `http://host:port` of the simulator, for the cashier page URLs.
    pub base_url: String,
    pub client_id: String,
    pub merchant_key: RsaVerifier,
    pub signer: Arc<RsaSigner>,
}

/// One simulated Antom merchant account.
pub(crate) struct AntomSim {
    setup: AntomSetup,
    state: Mutex<State>,
    stats: Arc<Stats>,
    dispatcher: Dispatcher,
}

#[derive(Default)]
struct State {
    payments: HashMap<String, Payment>,
    by_request: HashMap<String, String>,
    /// paymentIds in creation order.
    order: Vec<String>,
    refunds: HashMap<String, RefundRec>,
    refunds_by_request: HashMap<String, String>,
}

/// A notify to send once the state lock is released: (URL, body).
type Notify = (String, Value);

type Api = fn(&AntomSim, &mut State, &Value, &mut Vec<Notify>) -> Value;

/// The API surface: name after the prefix, fault op, handler.
const APIS: &[(&str, Op, Api)] = &[
    ("pay", Op::Create, AntomSim::pay),
    ("inquiryPayment", Op::Query, AntomSim::inquiry_payment),
    ("cancel", Op::Cancel, AntomSim::cancel),
    ("refund", Op::Refund, AntomSim::refund),
    ("inquiryRefund", Op::Query, AntomSim::inquiry_refund),
];

fn param_illegal(message: &str) -> Value {
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
}

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
    Ok(PayInput { amount, method_type, redirect_url, notify_url })
}

/// The keyVersion of a Signature header, if it names one.
fn key_version(sig: &str) -> Option<&str> {
    sig.split(',').find_map(|part| part.trim().strip_prefix("keyVersion="))
}

impl AntomSim {
    pub(crate) fn new(setup: AntomSetup, stats: Arc<Stats>, dispatcher: Dispatcher) -> Self {
        AntomSim { setup, state: Mutex::default(), stats, dispatcher }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An HTTP answer signed with the provider key, header names in lower case.
    fn signed(&self, path: &str, status: u16, body: &Value) -> Response {
        let body = body.to_string();
        let (_, t) = now_hkt();
        let sig = self.setup.signer.sign(&string_to_sign(path, &self.setup.client_id, &t, body.as_bytes()));
        Response::new(status)
            .header("content-type", "application/json; charset=UTF-8")
            .header("client-id", self.setup.client_id.as_str())
            .header("response-time", t)
            .header("signature", signature_header(1, &sig))
            .body(body)
    }

    /// Checks client-id and the merchant's signature; `Err` is the `result` to answer with.
    fn verify(&self, req: &Request) -> Result<(), Value> {
        let cid =
            req.header("client-id").ok_or_else(|| outcome("CLIENT_INVALID", "F", "client-id header is missing."))?;
        if cid != self.setup.client_id {
            return Err(outcome("CLIENT_INVALID", "F", &format!("The client-id {cid} is not valid.")));
        }
        let time = req.header("request-time").ok_or_else(|| param_illegal("request-time header is missing."))?;
        let sig =
            req.header("signature").ok_or_else(|| outcome("INVALID_SIGNATURE", "F", "signature header is missing."))?;
        if let Some(v) = key_version(sig).filter(|v| *v != "1") {
            return Err(outcome("KEY_NOT_FOUND", "F", &format!("No merchant public key with keyVersion {v}.")));
        }
        if !verify_signed(&self.setup.merchant_key, &req.path, cid, time, sig, &req.body) {
            return Err(outcome("INVALID_SIGNATURE", "F", "The signature is invalid."));
        }
        Ok(())
    }

    fn execute(&self, api: Api, req: &Request) -> Response {
        let body = match serde_json::from_slice::<Value>(&req.body) {
            Ok(v) if v.is_object() => {
                let mut notifies = Vec::new();
                let out = {
                    let mut st = self.lock();
                    api(self, &mut st, &v, &mut notifies)
                };
                for (url, body) in notifies {
                    self.notify(url, body);
                }
                out
            }
            _ => param_illegal("The request body is not a JSON object."),
        };
        self.signed(&req.path, 200, &body)
    }

    /// Sends a signed notify (signed per attempt over the notify URL's path).
    fn notify(&self, url: String, body: Value) {
        let Ok(uri) = url.parse::<http::Uri>() else {
            tracing::warn!(%url, "sandbox: cannot notify an unparseable URL");
            return;
        };
        let path = uri.path().to_string();
        let label =
            format!("{} {}", body["notifyType"].as_str().unwrap_or(""), body["paymentId"].as_str().unwrap_or(""));
        let (signer, cid) = (self.setup.signer.clone(), self.setup.client_id.clone());
        self.dispatcher.send(Callback {
            url,
            label,
            body: Bytes::from(body.to_string()),
            ack: Ack::AntomResult,
            sign: Box::new(move |body| {
                let (_, t) = now_hkt();
                let sig = signer.sign(&string_to_sign(&path, &cid, &t, body));
                vec![
                    ("content-type".into(), "application/json; charset=UTF-8".into()),
                    ("client-id".into(), cid.clone()),
                    ("request-time".into(), t),
                    ("signature".into(), signature_header(1, &sig)),
                ]
            }),
        });
    }

    // ---- API handlers ---------------------------------------------------------------------

    fn pay(&self, st: &mut State, v: &Value, _: &mut Vec<Notify>) -> Value {
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
            Payment {
                payment_id: payment_id.clone(),
                payment_request_id: prid.to_string(),
                amount: input.amount,
                status: PayStatus::Processing,
                method_type: input.method_type,
                created,
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
            },
        );
        st.by_request.insert(prid.to_string(), payment_id.clone());
        st.order.push(payment_id);
        Stats::bump(&self.stats.payments_created);
        response
    }

    /// The paymentId a request names by `paymentId` and/or `paymentRequestId`.
    fn find(st: &State, v: &Value) -> Result<String, Value> {
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

    fn inquiry_payment(&self, st: &mut State, v: &Value, _: &mut Vec<Notify>) -> Value {
        let id = match Self::find(st, v) {
            Ok(id) => id,
            Err(e) => return e,
        };
        match st.payments.get(&id) {
            Some(p) => {
                let refunds: Vec<&RefundRec> = p.refund_ids.iter().filter_map(|r| st.refunds.get(r)).collect();
                inquiry_json(p, &refunds)
            }
            None => not_found(),
        }
    }

    fn cancel(&self, st: &mut State, v: &Value, _: &mut Vec<Notify>) -> Value {
        let id = match Self::find(st, v) {
            Ok(id) => id,
            Err(e) => return e,
        };
        let Some(p) = st.payments.get_mut(&id) else { return not_found() };
        match p.status {
            PayStatus::Processing => {
                p.status = PayStatus::Cancelled;
                p.cancel_time = Some(now_hkt().1);
            }
            PayStatus::Cancelled => {}
            s => {
                return outcome(
                    "ORDER_STATUS_INVALID",
                    "F",
                    &format!("The payment is {}; only a PROCESSING payment can be cancelled.", s.as_str()),
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

    fn refund(&self, st: &mut State, v: &Value, notifies: &mut Vec<Notify>) -> Value {
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
        st.refunds.insert(refund_id, rec);
        Stats::bump(&self.stats.refunds);
        response
    }

    fn inquiry_refund(&self, st: &mut State, v: &Value, _: &mut Vec<Notify>) -> Value {
        let rec = match (str_field(v, "refundId"), str_field(v, "refundRequestId")) {
            (None, None) => return param_illegal("refundId or refundRequestId is required."),
            (Some(id), _) => st.refunds.get(id),
            (None, Some(r)) => st.refunds_by_request.get(r).and_then(|id| st.refunds.get(id)),
        };
        rec.map(refund_inquiry_json).unwrap_or_else(|| outcome("REFUND_NOT_EXIST", "F", "The refund does not exist."))
    }

    // ---- payer -------------------------------------------------------------------------------

    /// The payer approves or declines in the wallet; the result is notified.
    /// Returns the payment (control listing shape) and where to send the payer back.
    fn decide(&self, id: &str, approve: bool, code: Option<String>) -> Result<(Value, String), ActionError> {
        let (listing, redirect, notify) = {
            let mut st = self.lock();
            let pid = st.by_request.get(id).cloned().unwrap_or_else(|| id.to_string());
            let p = st.payments.get_mut(&pid).ok_or_else(|| ActionError::NotFound(format!("no payment {id}")))?;
            if p.status != PayStatus::Processing {
                return Err(ActionError::Conflict(format!("payment {id} is {}, not PROCESSING", p.status.as_str())));
            }
            if approve {
                p.status = PayStatus::Success;
                p.payment_time = Some(now_hkt().1);
                Stats::bump(&self.stats.payments_succeeded);
            } else {
                let code = code.unwrap_or_else(|| "USER_BALANCE_NOT_ENOUGH".into());
                let message = if code == "USER_BALANCE_NOT_ENOUGH" {
                    "The user balance is not enough for this payment.".to_string()
                } else {
                    format!("The payer declined the payment ({code}).")
                };
                p.status = PayStatus::Fail;
                p.failure = Some((code, message));
            }
            let notify = p.notify_url.clone().map(|u| (u, payment_notify(p)));
            (listing(p), p.redirect_url.clone(), notify)
        };
        if let Some((url, body)) = notify {
            self.notify(url, body);
        }
        Ok((listing, redirect))
    }

    fn page(&self, req: &Request) -> Option<Response> {
        if req.method == http::Method::GET {
            let ids = match_path("/pay/:id", &req.path)?;
            return Some(self.cashier_page(ids.first().map(String::as_str).unwrap_or("")));
        }
        if req.method == http::Method::POST {
            let ids = match_path("/pay/:id/:action", &req.path)?;
            let (id, action) = (ids.first().map(String::as_str).unwrap_or(""), ids.get(1).map(String::as_str));
            let approve = match action {
                Some("approve") => true,
                Some("decline") => false,
                _ => return Some(Response::new(404).body("unknown action")),
            };
            return Some(match self.decide(id, approve, None) {
                Ok((_, redirect)) => Response::redirect(&redirect),
                Err(e) => pages::page("Cannot complete the payment", &[("Reason", e.to_string())], &[]),
            });
        }
        None
    }

    fn cashier_page(&self, id: &str) -> Response {
        let st = self.lock();
        let Some(p) = st.payments.get(id) else {
            let mut r = pages::page("Unknown payment", &[("Payment", id.to_string())], &[]);
            r.status = 404;
            return r;
        };
        let rows = [
            ("Payment", p.payment_id.clone()),
            ("Merchant request", p.payment_request_id.clone()),
            ("Amount", format!("{} {}", p.amount.currency, major(&p.amount))),
            ("Status", p.status.as_str().to_string()),
        ];
        let actions = if p.status == PayStatus::Processing {
            vec![("Approve", format!("/pay/{id}/approve")), ("Decline", format!("/pay/{id}/decline"))]
        } else {
            vec![]
        };
        pages::page("AlipayHK sandbox cashier", &rows, &actions)
    }
}

fn major(a: &Amount) -> String {
    crate::domain::Currency::parse(&a.currency).map(|c| c.format_major(a.value)).unwrap_or_else(|_| a.value.to_string())
}

/// A payment in the control API's listing shape.
fn listing(p: &Payment) -> Value {
    json!({
        "id": p.payment_id,
        "status": p.status.as_str(),
        "amount": p.amount.value,
        "currency": p.amount.currency,
        "reference": p.payment_request_id,
        "created": p.created,
        "create_time": p.create_time,
        "payment_time": p.payment_time,
        "refunded": p.refunded,
        "payment_method_type": p.method_type,
        "notify_url": p.notify_url,
        "result_code": p.failure.as_ref().map(|f| f.0.clone()),
    })
}

#[async_trait::async_trait]
impl Simulator for AntomSim {
    async fn serve(&self, req: Request, gate: &FaultGate) -> Reply {
        tracing::debug!(instance = %self.setup.name, method = %req.method, path = %req.path, "sandbox request");
        if let Some(page) = self.page(&req) {
            return Reply::Respond(page);
        }
        let api = PREFIXES
            .iter()
            .find_map(|p| req.path.strip_prefix(p))
            .and_then(|name| APIS.iter().find(|(n, _, _)| *n == name))
            .filter(|_| req.method == http::Method::POST);
        let Some(&(_, op, api)) = api else {
            return Reply::Respond(self.signed(
                &req.path,
                200,
                &outcome("NO_INTERFACE_DEF", "F", "API is not defined."),
            ));
        };
        if let Err(body) = self.verify(&req) {
            return Reply::Respond(self.signed(&req.path, 200, &body));
        }
        let failed = |status| {
            let body = outcome(
                "UNKNOWN_EXCEPTION",
                "U",
                "An API calling is failed, which is caused by unknown reasons (sandbox fault injection).",
            );
            self.signed(&req.path, status, &body)
        };
        gate.run(op, || self.execute(api, &req), failed).await.reply
    }

    fn payments(&self) -> Vec<Value> {
        let st = self.lock();
        st.order.iter().filter_map(|id| st.payments.get(id)).map(listing).collect()
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn payer_action(&self, collection: &str, id: &str, action: &str, body: &[u8]) -> Result<Value, ActionError> {
        // Optional body for decline: {"code": "<resultCode>"}.
        let code = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("code")?.as_str().map(String::from));
        match (collection, action) {
            ("payments", "approve") => self.decide(id, true, None).map(|(v, _)| v),
            ("payments", "decline") => self.decide(id, false, code).map(|(v, _)| v),
            _ => Err(ActionError::NotFound(format!(
                "Antom payer actions are payments/{{paymentId}}/approve and payments/{{paymentId}}/decline, not {collection}/{{id}}/{action}"
            ))),
        }
    }
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
        assert!(request_id(&json!({"paymentRequestId": "x".repeat(65)}), "paymentRequestId").is_err());
    }

    #[test]
    fn key_version_is_read_from_the_signature_header() {
        assert_eq!(key_version("algorithm=RSA256,keyVersion=2,signature=abc"), Some("2"));
        assert_eq!(key_version("algorithm=RSA256,signature=abc"), None);
    }
}
