//! The sandbox's simulators against the providers' official SDKs (Python, from `.venv`, made by
//! `scripts/setup.sh`), the exact Antom wire format, and every fault the sandbox can inject.
//!
//! Each test starts its own sandbox on free loopback ports, plus a small webhook receiver
//! that records (and, for the SDK scripts, saves to files) every callback delivered to it.

use paymux::sandbox::{Faults, Sandbox, SandboxConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STRIPE: &str = "stripe_primary";
const ANTOM: &str = "antom_hk";

// ---- webhook receiver ------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Hit {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Records every POST it gets and answers 200 with a Stripe- or Antom-style acknowledgement
/// (Antom for paths under `/antom`).
struct Receiver {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Receiver {
    async fn start(save_to: Option<PathBuf>) -> Receiver {
        Self::start_failing(save_to, 0).await
    }

    /// Answers the first `fail_first` deliveries of each callback with HTTP 500.
    async fn start_failing(save_to: Option<PathBuf>, fail_first: usize) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let seq = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(receive(s, h.clone(), save_to.clone(), seq.clone(), fail_first));
            }
        });
        Receiver { addr, hits }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the hits (or panics after `secs`).
    async fn wait(&self, secs: u64, what: &str, pred: impl Fn(&[Hit]) -> bool) -> Vec<Hit> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let hits = self.hits();
            if pred(&hits) {
                return hits;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; got {hits:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    mut s: TcpStream,
    hits: Arc<Mutex<Vec<Hit>>>,
    save_to: Option<PathBuf>,
    seq: Arc<AtomicUsize>,
    fail_first: usize,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let hit = Hit { path: path.clone(), headers, body: String::from_utf8_lossy(&body).into_owned() };
    if let Some(dir) = save_to {
        let n = seq.fetch_add(1, Ordering::SeqCst);
        let headers: serde_json::Map<String, Value> =
            hit.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let saved = json!({"path": hit.path, "headers": headers, "body": hit.body});
        let tmp = dir.join(format!("{n:05}.tmp"));
        std::fs::write(&tmp, saved.to_string()).unwrap();
        std::fs::rename(&tmp, dir.join(format!("{n:05}.json"))).unwrap();
    }
    // Deliveries of this callback so far, this one included (a Stripe event by its id, an
    // Antom notify by its payment or refund).
    let key = |h: &Hit| {
        let v = h.json();
        ["id", "refundId", "paymentId"].iter().find_map(|k| v[*k].as_str().map(String::from)).unwrap_or_default()
    };
    let n = {
        let mut hits = hits.lock().unwrap();
        let k = key(&hit);
        hits.push(hit);
        hits.iter().filter(|h| key(h) == k).count()
    };
    let status = if n <= fail_first { "500 Internal Server Error" } else { "200 OK" };
    let ack = if path.starts_with("/antom") {
        r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#
    } else {
        r#"{"received":true}"#
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ack}",
        ack.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

// ---- sandbox and clients ---------------------------------------------------------------------

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The demo sandbox on free ports, webhooks to `callback_base`.
fn config(callback_base: &str, antom_tls: Option<SocketAddr>) -> SandboxConfig {
    let mut c = SandboxConfig::demo(callback_base);
    c.control_listen = any_port();
    for s in &mut c.stripe {
        s.listen = any_port();
    }
    for a in &mut c.antom {
        a.listen = any_port();
        a.tls_listen = antom_tls;
    }
    c
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

struct Env {
    sandbox: Sandbox,
    cfg: SandboxConfig,
    http: reqwest::Client,
}

impl Env {
    async fn start(callback_base: &str) -> Env {
        let cfg = config(callback_base, None);
        let sandbox = Sandbox::start(cfg.clone()).await.expect("sandbox starts");
        Env { sandbox, cfg, http: client() }
    }

    fn control(&self, path: &str) -> String {
        format!("http://{}/_sandbox/{path}", self.sandbox.control_addr())
    }

    fn stripe_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sandbox.addr(STRIPE).unwrap())
    }

    async fn set_faults(&self, instance: &str, f: Value) {
        let r = self.http.put(self.control(&format!("faults/{instance}"))).json(&f).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    async fn clear_faults(&self, instance: &str) {
        let r = self.http.delete(self.control(&format!("faults/{instance}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn control_json(&self, path: &str) -> Value {
        self.http.get(self.control(path)).send().await.unwrap().json().await.unwrap()
    }

    /// `POST /v1/payment_intents` with pm_card_visa, confirm=true and the given attempt ref.
    async fn stripe_pay(
        &self,
        http: &reqwest::Client,
        attempt: &str,
        idem: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let form = [
            ("amount", "1000"),
            ("currency", "hkd"),
            ("confirm", "true"),
            ("payment_method", "pm_card_visa"),
            ("metadata[paymux_attempt]", attempt),
        ];
        let mut req =
            http.post(self.stripe_url("/v1/payment_intents")).bearer_auth(&self.cfg.stripe[0].api_key).form(&form);
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await
    }

    async fn stripe_payments(&self) -> Vec<Value> {
        self.control_json(&format!("{STRIPE}/payments")).await.as_array().cloned().unwrap_or_default()
    }
}

// ---- the official SDKs -----------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/py/<script>` with the venv's Python; the test fails (never skips) without it.
async fn run_python(script: &str, vars: &[(&str, String)]) {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh to create the Python venv with the providers' SDKs",
        python.display()
    );
    let mut cmd = tokio::process::Command::new(&python);
    cmd.arg(root().join("tests/py").join(script)).current_dir(root()).kill_on_drop(true);
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        cmd.env_remove(k);
    }
    cmd.env("NO_PROXY", "*").env("PYTHONDONTWRITEBYTECODE", "1");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within 300 s"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("--- {script} stdout ---\n{stdout}\n--- {script} stderr ---\n{stderr}");
    assert!(out.status.success(), "{script} failed ({}):\n{stdout}\n{stderr}", out.status);
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_python_sdk_against_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Some(dir.path().to_path_buf())).await;
    let env = Env::start(&rx.base()).await;
    let s = &env.cfg.stripe[0];
    run_python(
        "test_stripe_sdk.py",
        &[
            ("STRIPE_API_BASE", env.stripe_url("")),
            ("STRIPE_API_KEY", s.api_key.clone()),
            ("STRIPE_WEBHOOK_SECRET", s.webhook_secret.clone()),
            ("STRIPE_INSTANCE", STRIPE.into()),
            ("SANDBOX_CONTROL", format!("http://{}", env.sandbox.control_addr())),
            ("WEBHOOK_DIR", dir.path().display().to_string()),
        ],
    )
    .await;
    let stats = env.control_json(&format!("{STRIPE}/stats")).await;
    assert!(stats["payments_succeeded"].as_u64().unwrap() >= 5, "{stats}");
    assert!(stats["refunds"].as_u64().unwrap() >= 2, "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn antom_python_sdk_against_the_sandbox_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Some(dir.path().to_path_buf())).await;
    // The SDK always connects to port 443 of the gateway host (tests run as root).
    let tls: SocketAddr = "127.0.0.2:443".parse().unwrap();
    let cfg = config(&rx.base(), Some(tls));
    let sandbox = Sandbox::start(cfg.clone())
        .await
        .unwrap_or_else(|e| panic!("sandbox with TLS on {tls} (needs root or CAP_NET_BIND_SERVICE): {e:#}"));
    assert_eq!(sandbox.tls_addr(ANTOM), Some(tls));
    let keys = root().join("sandbox/keys");
    run_python(
        "test_antom_sdk.py",
        &[
            ("ANTOM_GATEWAY", "https://127.0.0.2".into()),
            ("ANTOM_CLIENT_ID", cfg.antom[0].client_id.clone()),
            ("ANTOM_INSTANCE", ANTOM.into()),
            ("MERCHANT_PRIVATE_KEY_FILE", keys.join("antom_merchant_private.pem").display().to_string()),
            ("PROVIDER_PUBLIC_KEY_FILE", keys.join("antom_provider_public.pem").display().to_string()),
            ("SSL_CERT_FILE", root().join("sandbox/tls/ca.pem").display().to_string()),
            ("SANDBOX_CONTROL", format!("http://{}", sandbox.control_addr())),
            ("NOTIFY_URL", format!("{}/antom/notify", rx.base())),
            ("WEBHOOK_DIR", dir.path().display().to_string()),
        ],
    )
    .await;
}

// ---- the Antom wire format -------------------------------------------------------------------

const MERCHANT_PRIVATE: &str = include_str!("../sandbox/keys/antom_merchant_private.pem");
const PROVIDER_PUBLIC: &str = include_str!("../sandbox/keys/antom_provider_public.pem");

/// A signed Antom request as raw bytes, in absolute form as the Python SDK sends it.
fn antom_raw_request(path: &str, client_id: &str, body: &str) -> Vec<u8> {
    use paymux::connector::antom::{request_time, signature_header, string_to_sign};
    let signer = paymux::crypto::RsaSigner::from_text(MERCHANT_PRIVATE).unwrap();
    let t = request_time(time::OffsetDateTime::now_utc());
    let sig = signature_header(1, &signer.sign(&string_to_sign(path, client_id, &t, body.as_bytes())));
    format!(
        "POST https://127.0.0.1{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-type: application/json; charset=UTF-8\r\n\
Request-Time: {t}\r\nclient-id: {client_id}\r\nSignature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (String, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers = lines.filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    (status, headers, body.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn antom_answers_are_signed_with_lower_case_header_names_on_the_wire() {
    let env = Env::start("http://127.0.0.1:9").await;
    let addr = env.sandbox.addr(ANTOM).unwrap();
    let cid = env.cfg.antom[0].client_id.clone();
    let path = "/ams/sandbox/api/v1/payments/inquiryPayment";
    let (status, headers, body) =
        raw_exchange(addr, &antom_raw_request(path, &cid, r#"{"paymentRequestId":"nope"}"#)).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    for n in ["client-id", "response-time", "signature"] {
        assert!(names.contains(&n), "header `{n}` must be sent in lower case; got {names:?}");
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap();
    let provider = paymux::crypto::RsaVerifier::from_text(PROVIDER_PUBLIC).unwrap();
    assert!(
        paymux::connector::antom::verify_signed(
            &provider,
            path,
            &get("client-id"),
            &get("response-time"),
            &get("signature"),
            body.as_bytes()
        ),
        "the response signature must verify over the request path"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["result"]["resultCode"], "ORDER_NOT_EXIST");
    assert!(get("response-time").ends_with("+08:00"));

    // A request signed for another path (or by someone else) is refused, still HTTP 200.
    let mut forged = antom_raw_request("/ams/api/v1/payments/inquiryPayment", &cid, r#"{"paymentRequestId":"x"}"#);
    let at = forged.windows(4).position(|w| w == b"/ams").unwrap();
    forged.splice(at..at + "/ams/api".len(), b"/ams/sandbox/api".iter().copied());
    let (status, _, body) = raw_exchange(addr, &forged).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["result"]["resultCode"], "INVALID_SIGNATURE");
    let (_, _, body) = raw_exchange(addr, &antom_raw_request(path, "SANDBOX_OTHER", "{}")).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["result"]["resultCode"], "CLIENT_INVALID");
}

// ---- faults ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn fault_down_refuses_connections_and_recovers() {
    let env = Env::start("http://127.0.0.1:9").await;
    let addr = env.sandbox.addr(STRIPE).unwrap();
    // A pooled keep-alive connection from before the outage.
    let pooled = client();
    assert_eq!(env.stripe_pay(&pooled, "before", None).await.unwrap().status(), 200);
    env.set_faults(STRIPE, json!({"down": true})).await;
    let err = std::net::TcpStream::connect(addr).expect_err("connect while down");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(env.stripe_pay(&pooled, "during", None).await.is_err(), "idle keep-alive connections are dropped");
    assert!(env.sandbox.addr(ANTOM).map(std::net::TcpStream::connect).unwrap().is_ok(), "other instances stay up");
    env.clear_faults(STRIPE).await;
    std::net::TcpStream::connect(addr).expect("listening again");
    assert_eq!(env.stripe_pay(&client(), "after", None).await.unwrap().status(), 200);
    let refs: Vec<Value> = env.stripe_payments().await.iter().map(|p| p["reference"].clone()).collect();
    assert_eq!(refs, vec![json!("before"), json!("after")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_blackhole_never_answers() {
    let env = Env::start("http://127.0.0.1:9").await;
    env.set_faults(STRIPE, json!({"blackhole": true, "ops": ["create"]})).await;
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(700)).build().unwrap();
    let started = Instant::now();
    let err = env.stripe_pay(&http, "hole", None).await.expect_err("no answer");
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert!(env.stripe_payments().await.is_empty(), "not processed without process_before_error");
    // Other operations still answer.
    let r = http
        .get(env.stripe_url("/v1/payment_intents/pi_missing"))
        .bearer_auth(&env.cfg.stripe[0].api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    env.set_faults(STRIPE, json!({"blackhole": true, "process_before_error": true})).await;
    assert!(env.stripe_pay(&http, "hole-processed", None).await.unwrap_err().is_timeout());
    let listed = env.stripe_payments().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0]["reference"].as_str(), listed[0]["status"].as_str()),
        (Some("hole-processed"), Some("succeeded"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_error_rate_with_status_and_process_before_error() {
    let env = Env::start("http://127.0.0.1:9").await;
    let http = client();
    env.set_faults(STRIPE, json!({"error_rate_pct": 100, "error_status": 503, "ops": ["create"]})).await;
    let r = env.stripe_pay(&http, "lost", Some("key-lost")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("request-id"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "api_error");
    assert!(env.stripe_payments().await.is_empty(), "without process_before_error nothing is applied");

    env.set_faults(STRIPE, json!({"error_rate_pct": 100, "error_status": 503, "process_before_error": true})).await;
    let r = env.stripe_pay(&http, "ambiguous", Some("key-ambiguous")).await.unwrap();
    assert_eq!(r.status(), 503);
    env.clear_faults(STRIPE).await;
    let listed = env.stripe_payments().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["reference"], "ambiguous");
    assert_eq!(listed[0]["status"], "succeeded");
    // The retry with the same key replays what was processed.
    let r = env.stripe_pay(&http, "ambiguous", Some("key-ambiguous")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], listed[0]["id"]);
    // The unapplied request's key is free to be retried.
    assert_eq!(env.stripe_pay(&http, "lost", Some("key-lost")).await.unwrap().status(), 200);

    // Antom: the injected status with a signed, Antom-shaped body.
    env.set_faults(ANTOM, json!({"error_rate_pct": 100, "error_status": 502})).await;
    let cid = env.cfg.antom[0].client_id.clone();
    let (status, _, body) = raw_exchange(
        env.sandbox.addr(ANTOM).unwrap(),
        &antom_raw_request("/ams/api/v1/payments/inquiryPayment", &cid, r#"{"paymentRequestId":"x"}"#),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 502"), "{status}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["result"]["resultStatus"], "U");
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_latency_delays_answers() {
    let env = Env::start("http://127.0.0.1:9").await;
    let http = client();
    env.set_faults(STRIPE, json!({"latency_ms": 400})).await;
    // What is set can be read back, per instance.
    assert_eq!(env.control_json(&format!("faults/{STRIPE}")).await["latency_ms"], 400);
    let started = Instant::now();
    assert_eq!(env.stripe_pay(&http, "slow", None).await.unwrap().status(), 200);
    let slow = started.elapsed();
    assert!(slow >= Duration::from_millis(400), "{slow:?}");
    // While the first request with a key is still running, the same key gets 409.
    let (a, b) = tokio::join!(env.stripe_pay(&http, "race", Some("key-race")), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        env.stripe_pay(&http, "race", Some("key-race")).await
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 409));
    let v: Value = b.json().await.unwrap();
    assert_eq!(v["error"]["code"], "idempotency_key_in_use", "{v}");
    env.set_faults(STRIPE, json!({"latency_ms": 400, "ops": ["refund"]})).await;
    let started = Instant::now();
    assert_eq!(env.stripe_pay(&http, "fast", None).await.unwrap().status(), 200);
    assert!(started.elapsed() < Duration::from_millis(400), "ops limits latency to the listed operations");
}

fn succeeded_for(hits: &[Hit], pi: &str) -> Vec<Hit> {
    hits.iter()
        .filter(|h| {
            let v = h.json();
            v["type"] == "payment_intent.succeeded" && v["data"]["object"]["id"] == pi
        })
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_callbacks_drop_and_duplicate() {
    let rx = Receiver::start(None).await;
    let env = Env::start(&rx.base()).await;
    let http = client();
    // Baseline: one delivery.
    let v: Value = env.stripe_pay(&http, "normal", None).await.unwrap().json().await.unwrap();
    let pi = v["id"].as_str().unwrap().to_string();
    let hits = rx.wait(5, "one webhook", |h| succeeded_for(h, &pi).len() == 1).await;
    // paymux's own Stripe connector accepts what the simulator signs.
    let hit = &succeeded_for(&hits, &pi)[0];
    let s = &env.cfg.stripe[0];
    let conn = paymux::connector::stripe::Stripe::new(
        paymux::domain::Secret::new(s.api_key.clone()),
        paymux::domain::Secret::new(s.webhook_secret.clone()),
        300,
        0,
    );
    let mut headers = http::HeaderMap::new();
    for (k, v) in &hit.headers {
        headers.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    use paymux::connector::Connector;
    let event =
        conn.verify_webhook(&hit.path, &headers, hit.body.as_bytes(), now).expect("paymux verifies the webhook");
    assert_eq!(event.event_id, hit.json()["id"].as_str().unwrap());

    env.set_faults(STRIPE, json!({"callbacks": {"drop": true}})).await;
    let v: Value = env.stripe_pay(&http, "dropped", None).await.unwrap().json().await.unwrap();
    let dropped = v["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(succeeded_for(&rx.hits(), &dropped).is_empty(), "a dropped webhook was sent");
    let stats = env.control_json(&format!("{STRIPE}/stats")).await;
    assert!(stats["callbacks_dropped"].as_u64().unwrap() >= 1, "{stats}");

    env.set_faults(STRIPE, json!({"callbacks": {"duplicate": true, "delay_ms": 200}})).await;
    let v: Value = env.stripe_pay(&http, "twice", None).await.unwrap().json().await.unwrap();
    let twice = v["id"].as_str().unwrap().to_string();
    let hits = rx.wait(5, "two webhooks", |h| succeeded_for(h, &twice).len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dup = succeeded_for(&rx.hits(), &twice);
    assert_eq!(dup.len(), 2, "{hits:#?}");
    assert_eq!(dup[0].json()["id"], dup[1].json()["id"], "the same event, sent twice");
    assert_eq!(dup[0].path, format!("/v1/webhooks/{STRIPE}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn callbacks_are_retried_until_acknowledged() {
    // Stripe: the first five deliveries get HTTP 500 (nearly 4 s of a receiver down), the
    // sixth is acknowledged: retried for as long as Stripe retries, not a fixed few times.
    let rx = Receiver::start_failing(None, 5).await;
    let env = Env::start(&rx.base()).await;
    let v: Value = env.stripe_pay(&client(), "retried", None).await.unwrap().json().await.unwrap();
    let pi = v["id"].as_str().unwrap().to_string();
    let hits = rx.wait(15, "six attempts", |h| succeeded_for(h, &pi).len() >= 6).await;
    let tries = succeeded_for(&hits, &pi);
    assert!(tries.iter().all(|h| h.json()["id"] == tries[0].json()["id"]), "every attempt carries the same event");
    // payment_intent.created, charge.succeeded and payment_intent.succeeded, each delivered
    // once (their sixth attempts go out side by side).
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.control_json(&format!("{STRIPE}/stats")).await["callbacks_delivered"] != 3 {
        assert!(Instant::now() < deadline, "{}", env.control_json(&format!("{STRIPE}/stats")).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Antom: an acknowledgement that is not `resultStatus: S` is retried, then given up once
    // its retry window (shortened by a fault to 3 s) has passed: attempts at 0, 0.25, 0.75
    // and 1.75 s; the next would come at 3.75 s.
    env.set_faults(ANTOM, json!({"callbacks": {"retry_for_ms": 3000}})).await;
    let cid = env.cfg.antom[0].client_id.clone();
    let pay = json!({
        "productCode": "CASHIER_PAYMENT",
        "paymentRequestId": "PAY-retry",
        "order": {"referenceOrderId": "O-1", "orderDescription": "d"},
        "paymentAmount": {"currency": "HKD", "value": "1000"},
        "paymentMethod": {"paymentMethodType": "ALIPAY_HK"},
        "paymentRedirectUrl": "https://merchant.example/return",
        "paymentNotifyUrl": format!("{}/not-antom/notify", rx.base()),
        "env": {"terminalType": "WEB"},
    });
    let addr = env.sandbox.addr(ANTOM).unwrap();
    let (_, _, body) = raw_exchange(addr, &antom_raw_request("/ams/api/v1/payments/pay", &cid, &pay.to_string())).await;
    let payment_id = serde_json::from_str::<Value>(&body).unwrap()["paymentId"].as_str().unwrap().to_string();
    let r = env.http.post(env.control(&format!("{ANTOM}/payments/{payment_id}/approve"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let notifies = |h: &[Hit]| h.iter().filter(|h| h.path == "/not-antom/notify").count();
    rx.wait(15, "four notify attempts", |h| notifies(h) >= 4).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.control_json(&format!("{ANTOM}/stats")).await["callbacks_failed"] != 1 {
        assert!(Instant::now() < deadline, "the notify was never given up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(notifies(&rx.hits()), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn control_api_checks_faults_and_reports() {
    let env = Env::start("http://127.0.0.1:9").await;
    let http = &env.http;
    let r = http.put(env.control("faults/nope")).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.put(env.control(&format!("faults/{STRIPE}"))).body(r#"{"latency":5}"#).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("unknown field `latency`"));
    let r = http.put(env.control(&format!("faults/{STRIPE}"))).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r =
        http.put(env.control(&format!("faults/{STRIPE}"))).json(&json!({"error_rate_pct": 150})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    env.set_faults(ANTOM, json!({"latency_ms": 5, "callbacks": {"delay_ms": 10}})).await;
    let all = env.control_json("faults").await;
    let antom: Faults = serde_json::from_value(all[ANTOM].clone()).unwrap();
    assert_eq!((antom.latency_ms, antom.callbacks.delay_ms, antom.error_status), (5, 10, 500));
    assert_eq!(all[STRIPE]["latency_ms"], 0);
    assert_eq!(env.control_json("health").await["status"], "ok");
    env.stripe_pay(http, "counted", None).await.unwrap();
    let stats = env.control_json(&format!("{STRIPE}/stats")).await;
    assert_eq!((stats["requests"].as_u64(), stats["payments_created"].as_u64()), (Some(1), Some(1)), "{stats}");
    let r = http.post(env.control(&format!("{ANTOM}/payments/123/approve"))).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.get(env.control("nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn shipped_tls_material_is_the_embedded_one() {
    let ca = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox/tls/ca.pem")).unwrap();
    assert_eq!(ca, paymux::sandbox::CA_PEM);
}
