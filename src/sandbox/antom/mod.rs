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

mod handlers;
mod model;

use crate::connector::antom::{signature_header, string_to_sign, verify_signed};
use crate::crypto::{RsaSigner, RsaVerifier};
use crate::sandbox::callbacks::{Ack, Callback, Dispatcher};
use crate::sandbox::faults::{FaultGate, Op};
use crate::sandbox::http::{match_path, Reply, Request, Response};
use crate::sandbox::pages;
use crate::sandbox::sim::{ActionError, Simulator, Stats, Table};
use bytes::Bytes;
use handlers::param_illegal;
use model::{now_hkt, outcome, payment_notify, Amount, PayStatus, Payment, RefundRec};
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
    payments: Table<Payment>,
    by_request: HashMap<String, String>,
    /// paymentIds in creation order.
    order: Vec<String>,
    refunds: Table<RefundRec>,
    refunds_by_request: HashMap<String, String>,
    /// Notifies of payments closed on expiry, to send once the lock is released.
    expired: Vec<Notify>,
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

/// The keyVersion of a Signature header, if it names one.
fn key_version(sig: &str) -> Option<&str> {
    sig.split(',').find_map(|part| part.trim().strip_prefix("keyVersion="))
}

impl AntomSim {
    pub(crate) fn new(setup: AntomSetup, stats: Arc<Stats>, dispatcher: Dispatcher) -> Self {
        AntomSim { setup, state: Mutex::default(), stats, dispatcher }
    }

    /// The simulator's state, with payments past their expiry closed: whatever looks next
    /// (an inquiry, the cashier page, a cancel, the payer) sees them as Antom would. Their
    /// PAYMENT_RESULT notifies (a final failure is notified like a success) wait in
    /// `expired` for whoever releases the lock ([`AntomSim::execute`], or the sandbox's
    /// once-a-second [`Simulator::tick`]).
    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_hkt().0;
        let mut closed = Vec::new();
        for p in st.payments.values_mut().filter(|p| p.status == PayStatus::Processing && now >= p.expires) {
            p.status = PayStatus::Fail;
            p.failure = Some(("ORDER_IS_CLOSED".into(), "The payment expired before the payer completed it.".into()));
            closed.extend(p.notify_url.clone().map(|u| (u, payment_notify(p))));
        }
        st.expired.extend(closed);
        st
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
                    let out = api(self, &mut st, &v, &mut notifies);
                    notifies.append(&mut st.expired);
                    out
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
            retry_window: crate::sandbox::callbacks::ANTOM_RETRY_WINDOW,
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
        st.order.iter().filter_map(|id| st.payments.get(id)).map(|p| listing(p)).collect()
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

    fn tick(&self) {
        let due = std::mem::take(&mut self.lock().expired);
        for (url, body) in due {
            self.notify(url, body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::faults::Faults;
    use tokio::sync::watch;

    const MERCHANT_PRIVATE: &str = include_str!("../../../sandbox/keys/antom_merchant_private.pem");
    const MERCHANT_PUBLIC: &str = include_str!("../../../sandbox/keys/antom_merchant_public.pem");
    const PROVIDER_PRIVATE: &str = include_str!("../../../sandbox/keys/antom_provider_private.pem");
    const PROVIDER_PUBLIC: &str = include_str!("../../../sandbox/keys/antom_provider_public.pem");

    fn sim() -> AntomSim {
        let setup = AntomSetup {
            name: "t".into(),
            base_url: "http://127.0.0.1:1".into(),
            client_id: "SANDBOX_T".into(),
            merchant_key: RsaVerifier::from_text(MERCHANT_PUBLIC).unwrap(),
            signer: Arc::new(RsaSigner::from_text(PROVIDER_PRIVATE).unwrap()),
        };
        let stats = Arc::new(Stats::default());
        let faults = watch::channel(Faults::default()).1;
        let runtime = tokio::runtime::Handle::current();
        let dispatcher =
            Dispatcher::new(reqwest::Client::new(), faults, watch::channel(false).1, stats.clone(), runtime);
        AntomSim::new(setup, stats, dispatcher)
    }

    /// A request to `path` signed (by `key`) as if for `signed_path`.
    fn request(path: &str, signed_path: &str, cid: &str, key_version: u32, key: &str, body: &str) -> Request {
        let signer = RsaSigner::from_text(key).unwrap();
        let t = "2026-01-01T00:00:00+00:00";
        let sig = signer.sign(&string_to_sign(signed_path, cid, t, body.as_bytes()));
        let mut headers = http::HeaderMap::new();
        headers.insert("Client-Id", cid.parse().unwrap());
        headers.insert("Request-Time", t.parse().unwrap());
        headers.insert("Signature", signature_header(key_version, &sig).parse().unwrap());
        Request {
            method: http::Method::POST,
            path: path.into(),
            query: String::new(),
            headers,
            body: body.to_string().into(),
        }
    }

    #[tokio::test]
    async fn verifies_merchant_signatures() {
        let sim = sim();
        let p = "/ams/sandbox/api/v1/payments/inquiryPayment";
        let body = r#"{"paymentRequestId":"x"}"#;
        let code = |r: Request| sim.verify(&r).err().map(|v| v["result"]["resultCode"].clone());
        assert_eq!(code(request(p, p, "SANDBOX_T", 1, MERCHANT_PRIVATE, body)), None);
        assert_eq!(
            code(request(p, "/ams/api/v1/payments/inquiryPayment", "SANDBOX_T", 1, MERCHANT_PRIVATE, body)),
            Some(json!("INVALID_SIGNATURE"))
        );
        assert_eq!(code(request(p, p, "SANDBOX_T", 1, PROVIDER_PRIVATE, body)), Some(json!("INVALID_SIGNATURE")));
        assert_eq!(code(request(p, p, "SANDBOX_X", 1, MERCHANT_PRIVATE, body)), Some(json!("CLIENT_INVALID")));
        assert_eq!(code(request(p, p, "SANDBOX_T", 2, MERCHANT_PRIVATE, body)), Some(json!("KEY_NOT_FOUND")));
        let mut tampered = request(p, p, "SANDBOX_T", 1, MERCHANT_PRIVATE, body);
        tampered.body = r#"{"paymentRequestId":"y"}"#.into();
        assert_eq!(code(tampered), Some(json!("INVALID_SIGNATURE")));
        let mut unsigned = request(p, p, "SANDBOX_T", 1, MERCHANT_PRIVATE, body);
        unsigned.headers.remove("signature");
        assert_eq!(code(unsigned), Some(json!("INVALID_SIGNATURE")));
    }

    #[tokio::test]
    async fn answers_are_signed_over_the_request_path() {
        let sim = sim();
        let p = "/ams/api/v1/payments/pay";
        let r = sim.signed(p, 200, &outcome("ORDER_NOT_EXIST", "F", "x"));
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["content-type", "client-id", "response-time", "signature"]);
        let get = |n: &str| r.headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()).unwrap();
        let provider = RsaVerifier::from_text(PROVIDER_PUBLIC).unwrap();
        assert!(verify_signed(&provider, p, get("client-id"), get("response-time"), get("signature"), &r.body));
        assert!(!verify_signed(
            &provider,
            "/ams/sandbox/api/v1/payments/pay",
            get("client-id"),
            get("response-time"),
            get("signature"),
            &r.body
        ));
    }

    #[tokio::test]
    async fn payments_the_payer_never_completes_close_at_their_expiry() {
        let sim = sim();
        let at = |secs: i64| {
            let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
            t.format(&time::format_description::well_known::Rfc3339).unwrap()
        };
        let pay = |prid: &str, expiry: Option<String>| {
            let mut v = json!({
                "productCode": "CASHIER_PAYMENT", "paymentRequestId": prid,
                "order": {"referenceOrderId": "O-1", "orderDescription": "d"},
                "paymentAmount": {"currency": "HKD", "value": "1000"},
                "paymentMethod": {"paymentMethodType": "ALIPAY_HK"},
                "paymentRedirectUrl": "https://merchant.example/return",
                "env": {"terminalType": "WAP"},
            });
            if let Some(t) = expiry {
                v["paymentExpiryTime"] = json!(t);
            }
            let mut st = sim.lock();
            sim.pay(&mut st, &v, &mut vec![])
        };
        let status = |prid: &str| {
            let mut st = sim.lock();
            let r = sim.inquiry_payment(&mut st, &json!({"paymentRequestId": prid}), &mut vec![]);
            (r["paymentStatus"].clone(), r["paymentResultCode"].clone())
        };
        assert_eq!(pay("past", Some(at(-1)))["result"]["resultCode"], "PAYMENT_IN_PROCESS");
        pay("later", Some(at(3600)));
        pay("default", None);
        assert_eq!(status("past"), (json!("FAIL"), json!("ORDER_IS_CLOSED")));
        assert_eq!(status("later").0, "PROCESSING");
        // A payment closed on expiry is notified like any final result, with no request to
        // see it: the sandbox's tick sends what the lock found.
        {
            let mut st = sim.lock();
            st.expired.clear();
            let mut v = st.by_request.get("later").and_then(|id| st.payments.get(id)).unwrap().request.clone();
            v["paymentRequestId"] = json!("notified");
            v["paymentNotifyUrl"] = json!("http://127.0.0.1:9/notify");
            v["paymentExpiryTime"] = json!(at(-1));
            sim.pay(&mut st, &v, &mut vec![]);
        }
        let closed = std::mem::take(&mut sim.lock().expired);
        assert_eq!(closed.len(), 1, "{closed:?}");
        let (url, body) = &closed[0];
        assert_eq!(url, "http://127.0.0.1:9/notify");
        assert_eq!((&body["notifyType"], &body["result"]["resultStatus"]), (&json!("PAYMENT_RESULT"), &json!("F")));
        assert_eq!(body["result"]["resultCode"], "ORDER_IS_CLOSED");
        assert!(sim.lock().expired.is_empty(), "notified once");
        let st = sim.lock();
        let p = st.by_request.get("default").and_then(|id| st.payments.get(id)).unwrap();
        assert_eq!(p.expires - p.created, handlers::DEFAULT_EXPIRY_SECS);
    }

    #[test]
    fn key_version_is_read_from_the_signature_header() {
        assert_eq!(key_version("algorithm=RSA256,keyVersion=2,signature=abc"), Some("2"));
        assert_eq!(key_version("algorithm=RSA256,signature=abc"), None);
    }
}
