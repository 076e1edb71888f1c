//! Integration-test harness: writes a config for free loopback ports, runs the real `paymux`
//! binary (pingora) against the in-process sandbox, and talks HTTP to both.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "pmx_test_demo_key";

/// A free loopback port (bound then released), never the same one twice in this process:
/// tests run in parallel, and pingora listeners use SO_REUSEPORT, so two tests given the same
/// port would silently share it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Ports of one test's world.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub api: u16,
    pub admin: u16,
    pub stripe_primary: u16,
    pub stripe_backup: u16,
    pub antom: u16,
    pub control: u16,
}

impl Ports {
    pub fn new() -> Ports {
        Ports {
            api: free_port(),
            admin: free_port(),
            stripe_primary: free_port(),
            stripe_backup: free_port(),
            antom: free_port(),
            control: free_port(),
        }
    }
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes routes/ adapted to `ports` into `dir`, with `attempt_ms` for every channel.
pub fn write_config(dir: &Path, ports: Ports, data_dir: &Path, attempt_ms: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let keys = root().join("sandbox/keys");
    for f in ["server.yaml", "channels.yaml", "routing.yaml"] {
        let text = std::fs::read_to_string(root().join("routes").join(f)).unwrap();
        let text = text
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", ports.api))
            .replace("127.0.0.1:9090", &format!("127.0.0.1:{}", ports.admin))
            .replace("127.0.0.1:9101", &format!("127.0.0.1:{}", ports.stripe_primary))
            .replace("127.0.0.1:9102", &format!("127.0.0.1:{}", ports.stripe_backup))
            .replace("127.0.0.1:9103", &format!("127.0.0.1:{}", ports.antom))
            .replace("file:../sandbox/keys", &format!("file:{}", keys.display()))
            .replace("data_dir: ../data", &format!("data_dir: {}", data_dir.display()))
            .replace("attempt_ms: 3000", &format!("attempt_ms: {attempt_ms}"))
            .replace("$schema=../schemas", &format!("$schema={}/schemas", root().display()));
        std::fs::write(dir.join(f), text).unwrap();
    }
}

/// A running paymux process; killed on drop.
pub struct Paymux {
    pub child: Child,
    pub api: String,
    pub admin: String,
    pub config: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Paymux {
    pub fn start(config: &Path, data: &Path, ports: Ports) -> Paymux {
        Self::start_env(config, data, ports, &[])
    }

    /// [`Paymux::start`] with environment variables set (`None`: removed) for the process.
    pub fn start_env(config: &Path, data: &Path, ports: Ports, env: &[(&str, Option<&Path>)]) -> Paymux {
        let log = data.join(format!("paymux-{}.log", ports.api));
        std::fs::create_dir_all(data).unwrap();
        // PAYMUX_PIN_CPU=N runs paymux on CPU N only (the load bench uses it to keep the
        // load generator and the simulators off the proxy's core).
        let mut cmd = match std::env::var("PAYMUX_PIN_CPU") {
            Ok(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu, env!("CARGO_BIN_EXE_paymux")]);
                c
            }
            Err(_) => Command::new(env!("CARGO_BIN_EXE_paymux")),
        };
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let child = cmd
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            // PAYMUX_THREADS: worker threads per service (default 2; the load bench varies it).
            .args(["--threads", &std::env::var("PAYMUX_THREADS").unwrap_or_else(|_| "2".into())])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn paymux");
        let p = Paymux {
            child,
            api: format!("http://127.0.0.1:{}", ports.api),
            admin: format!("http://127.0.0.1:{}", ports.admin),
            config: config.into(),
            data: data.into(),
            log,
        };
        p.wait_ready();
        p
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if std::net::TcpStream::connect(self.admin.trim_start_matches("http://")).is_ok()
                && std::net::TcpStream::connect(self.api.trim_start_matches("http://")).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("paymux did not start; log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Paymux {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, headers, JSON (or Null).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
    pub text: String,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// A Stripe event signed with the primary channel's webhook secret, timestamped now.
pub fn stripe_event(url: &str, ev: &str) -> reqwest::RequestBuilder {
    stripe_event_of("stripe_primary", url, ev)
}

/// A Stripe event signed with `channel`'s webhook secret, timestamped now.
pub fn stripe_event_of(channel: &str, url: &str, ev: &str) -> reqwest::RequestBuilder {
    let secret = std::fs::read_to_string(root().join(format!("sandbox/keys/{channel}_webhook_secret"))).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mac =
        paymux::crypto::hex(&paymux::crypto::hmac_sha256(secret.trim().as_bytes(), format!("{now}.{ev}").as_bytes()));
    client().post(url).header("stripe-signature", format!("t={now},v1={mac}")).body(ev.to_string())
}

pub async fn send(req: reqwest::RequestBuilder) -> Resp {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Resp { status, headers, body, text }
}

/// `POST /v1/payments` with the demo key.
pub async fn create(base: &str, idem: &str, body: serde_json::Value) -> Resp {
    send(client().post(format!("{base}/v1/payments")).bearer_auth(KEY).header("idempotency-key", idem).json(&body))
        .await
}

pub async fn get(base: &str, path: &str) -> Resp {
    send(client().get(format!("{base}{path}")).bearer_auth(KEY)).await
}

pub async fn post(base: &str, path: &str, idem: Option<&str>, body: serde_json::Value) -> Resp {
    let mut r = client().post(format!("{base}{path}")).bearer_auth(KEY).json(&body);
    if let Some(k) = idem {
        r = r.header("idempotency-key", k);
    }
    send(r).await
}

/// The `Server-Timing` header of an API response: (paymux's own ms, ms waiting on providers).
pub fn server_timing(h: &reqwest::header::HeaderMap) -> Option<(f64, f64)> {
    let v = h.get("server-timing")?.to_str().ok()?;
    let dur = |name: &str| {
        v.split(',').map(str::trim).find_map(|m| m.strip_prefix(name)?.strip_prefix(";dur=")?.parse::<f64>().ok())
    };
    Some((dur("paymux")?, dur("provider")?))
}

pub fn card(order: &str, amount: i64) -> serde_json::Value {
    serde_json::json!({"amount": amount, "currency": "HKD", "method": "visa", "order_id": order, "payment_method_data": {"token": "pm_card_visa"}})
}

/// Waits up to `secs` seconds for the resource at `path` to read `status`; whether it did.
pub async fn reaches(base: &str, path: &str, status: &str, secs: u64) -> bool {
    eventually(Duration::from_secs(secs), || async { get(base, path).await.body["status"] == status }).await
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Counts rows of a table in the data dir's database (to prove "nothing stored").
pub fn count_rows(data: &Path, table: &str) -> i64 {
    let c = rusqlite::Connection::open(data.join("paymux.db")).unwrap();
    c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0)).unwrap()
}

/// paymux + sandbox on free ports.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub ports: Ports,
    pub pm: Paymux,
    pub sandbox: paymux::sandbox::Sandbox,
    pub ctrl: String,
}

/// The sandbox config for `ports`, calling back into paymux.
pub fn sandbox_config(ports: Ports) -> paymux::sandbox::SandboxConfig {
    let mut cfg = paymux::sandbox::SandboxConfig::demo(&format!("http://127.0.0.1:{}", ports.api));
    cfg.control_listen = format!("127.0.0.1:{}", ports.control).parse().unwrap();
    for s in cfg.stripe.iter_mut() {
        let port = if s.name == "stripe_primary" { ports.stripe_primary } else { ports.stripe_backup };
        s.listen = format!("127.0.0.1:{port}").parse().unwrap();
    }
    for a in cfg.antom.iter_mut() {
        a.listen = format!("127.0.0.1:{}", ports.antom).parse().unwrap();
        a.tls_listen = None;
    }
    cfg
}

/// Starts the sandbox and paymux with `attempt_ms` per channel.
pub async fn world(attempt_ms: u32) -> World {
    world_with(attempt_ms, |_| {}).await
}

/// A world whose config directory `edit` changes before paymux starts.
pub async fn world_with(attempt_ms: u32, edit: impl FnOnce(&Path)) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (cfg, data) = (tmp.path().join("cfg"), tmp.path().join("data"));
    write_config(&cfg, ports, &data, attempt_ms);
    edit(&cfg);
    let sandbox = paymux::sandbox::Sandbox::start(sandbox_config(ports)).await.expect("sandbox");
    let pm = Paymux::start(&cfg, &data, ports);
    World { tmp, ports, pm, sandbox, ctrl: format!("http://127.0.0.1:{}", ports.control) }
}

impl World {
    /// Starts paymux again on the same config, data directory and ports (after `kill9`).
    pub fn restart(&mut self) {
        let (cfg, data) = (self.tmp.path().join("cfg"), self.pm.data.clone());
        self.pm = Paymux::start(&cfg, &data, self.ports);
    }

    /// Sets faults on a simulator instance.
    pub async fn fault(&self, instance: &str, faults: serde_json::Value) {
        let r = send(client().put(format!("{}/_sandbox/faults/{instance}", self.ctrl)).json(&faults)).await;
        assert_eq!(r.status, 200, "set fault: {}", r.text);
    }

    pub async fn clear(&self, instance: &str) {
        let r = send(client().delete(format!("{}/_sandbox/faults/{instance}", self.ctrl))).await;
        assert!(r.status < 300, "clear fault: {}", r.text);
    }

    /// Payments a simulator instance holds.
    pub async fn sim_payments(&self, instance: &str) -> Vec<serde_json::Value> {
        let r = send(client().get(format!("{}/_sandbox/{instance}/payments", self.ctrl))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body.as_array().cloned().unwrap_or_else(|| r.body["data"].as_array().cloned().unwrap_or_default())
    }

    /// Payments in a charged state at a simulator instance.
    pub async fn charged(&self, instance: &str) -> usize {
        self.sim_payments(instance)
            .await
            .iter()
            .filter(|p| matches!(p["status"].as_str(), Some("succeeded" | "SUCCESS")))
            .count()
    }

    /// A simulator instance's counters (`requests`, `payments_created`, …).
    pub async fn sim_stats(&self, instance: &str) -> serde_json::Value {
        let r = send(client().get(format!("{}/_sandbox/{instance}/stats", self.ctrl))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body
    }

    pub async fn metrics(&self) -> String {
        client().get(format!("{}/metrics", self.pm.admin)).send().await.unwrap().text().await.unwrap()
    }
}

/// The value of a counter sample line `name{labels} value` whose labels contain `needle`.
pub fn metric(text: &str, name: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
