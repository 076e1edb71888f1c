//! Load script: added latency of paymux over calling the sandbox directly, at a fixed rate.
//!
//! Open loop (requests are sent on a fixed schedule whatever the responses do, and latency is
//! measured from the scheduled send time, so a stall is not hidden by coordinated omission;
//! how late the sends themselves left is printed with each run).
//! Loopback only; bounded by rate × seconds; stops by itself.
//!
//!   cargo bench --bench added_latency                          # 1000 req/s, 30 s of each kind
//!   PAYMUX_LOAD_RATE=500 PAYMUX_LOAD_SECS=5 cargo bench --bench added_latency
//!
//! Three kinds of request take turns in blocks of `PAYMUX_LOAD_BLOCK_MS` (default 50 ms), each
//! at the full rate: direct (the Stripe-compatible simulator, the same wire request paymux
//! would send), through paymux (POST /v1/payments, card via the Stripe channel), and the
//! floor: a round trip to a pingora service of paymux's that does nothing, then the direct
//! request (what any proxy in paymux's place pays). On a shared machine whose speed drifts
//! by the second, interleaving puts all kinds under the same conditions; sequential phases
//! let one phase's noise pass for paymux's cost (or hide it). Short blocks matter for the
//! tail: the host's stalls come several times a second and last milliseconds, and with
//! 500 ms blocks a run's p99 of any kind was set by the few stalls that happened to land
//! in its blocks (the difference read anywhere from −28 to +3 ms).
//! Added latency = paymux percentile − direct percentile. Each payment is also split by its
//! `Server-Timing` header into paymux's own time, its wait on the simulator and the rest
//! (the app ↔ paymux leg), to show where a slow one lost its time.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use paymux::connector::stripe::Stripe;
use paymux::connector::{Connector, CreateRequest};
use paymux::domain::{Currency, Method, Money, Secret};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// CPU time (user + system) a process has used, in seconds, from /proc (Linux; USER_HZ 100).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

/// (all, steal) CPU time of the whole machine so far, in ticks, from /proc/stat: the share
/// the hypervisor took away from this guest ("steal") says how busy the host was.
fn host_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    (f.iter().take(8).sum(), f.get(7).copied().unwrap_or(0))
}

/// A latency sample in µs, sorted.
struct Dist(Vec<u64>);

impl Dist {
    fn new(mut us: Vec<u64>) -> Dist {
        us.sort_unstable();
        Dist(us)
    }

    /// Share (%) of samples over `ms`.
    fn over(&self, ms: f64) -> f64 {
        let n = self.0.iter().filter(|&&us| us as f64 > ms * 1000.0).count();
        n as f64 * 100.0 / self.0.len().max(1) as f64
    }

    /// The `p` quantile, in ms.
    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i] as f64 / 1000.0
    }

    fn mean(&self) -> f64 {
        self.0.iter().sum::<u64>() as f64 / self.0.len().max(1) as f64 / 1000.0
    }
}

/// One payment through paymux, split by its `Server-Timing` header: the round trip as the
/// app saw it (from the request's own start), paymux's own time and its wait on the
/// provider, in µs. What is left is the app ↔ paymux leg (network, HTTP framing, wake-ups).
#[derive(Clone, Copy)]
struct Split {
    round_trip: u64,
    own: u64,
    provider: u64,
}

/// Where a kind's requests put what they measured.
type Sink<T> = Arc<Mutex<Vec<T>>>;

fn table(stats: &[&Stats]) {
    println!("| kind | sent | errors | p50 | p90 | p99 | p99.9 |");
    println!("|---|---|---|---|---|---|---|");
    for s in stats {
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            s.name,
            s.sent,
            s.errors,
            s.pct(0.5),
            s.pct(0.9),
            s.pct(0.99),
            s.pct(0.999)
        );
    }
    println!("\nby place in the block (first {OPENING} requests of each block, then the rest):\n");
    println!("| kind | opening: p99 | over 1 ms | rest: p99 | over 1 ms |");
    println!("|---|---|---|---|---|");
    for s in stats {
        println!(
            "| {} | {:.3} | {:.2} % | {:.3} | {:.2} % |",
            s.name,
            s.opening.pct(0.99),
            s.opening.over(1.0),
            s.rest.pct(0.99),
            s.rest.over(1.0)
        );
    }
}

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

struct Stats {
    name: &'static str,
    sent: usize,
    errors: usize,
    /// Latency from the scheduled send.
    lat: Dist,
    /// Latency from the request's own start (what the schedule's lateness leaves out).
    round_trip: Dist,
    /// Latency from the scheduled send of the first `OPENING` requests of each block, and of
    /// the rest: a kind idle through the other kinds' blocks may start each block cold.
    opening: Dist,
    rest: Dist,
}

/// Requests at the start of each block counted as its opening.
const OPENING: u64 = 5;

impl Stats {
    fn pct(&self, p: f64) -> f64 {
        self.lat.pct(p)
    }
}

/// A kind of request: request number → future resolving to "answered as expected".
type Kind = Arc<dyn Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync>;

fn kind<F, Fut>(f: F) -> Kind
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

/// Sends `rate` requests per second, rotating blocks of `block` among the kinds (each gets
/// `rate × secs` requests, so the run lasts `kinds × secs` seconds); returns their stats.
async fn run<const N: usize>(
    names: [&'static str; N],
    rate: u64,
    secs: u64,
    block: Duration,
    kinds: [Kind; N],
) -> [Stats; N] {
    let total = rate * secs * N as u64;
    let per_block = (rate * block.as_millis() as u64 / 1000).max(1);
    // The schedule is kept by a thread of its own: tokio's timer has a 1 ms granularity, which
    // at 1,000 req/s would release requests up to a millisecond late (and in step with the
    // timer tick); a thread's sleep is accurate to tens of microseconds.
    let rt = tokio::runtime::Handle::current();
    let pacer = std::thread::spawn(move || {
        let start = Instant::now() + Duration::from_millis(50);
        let mut handles = Vec::with_capacity(total as usize);
        let mut late_us = Vec::with_capacity(total as usize);
        let mut n = [0u64; N];
        for i in 0..total {
            let at = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            late_us.push(at.elapsed().as_micros() as u64);
            let k = ((i / per_block) % N as u64) as usize;
            let j = n[k];
            n[k] += 1;
            let fut = kinds[k](j);
            let opening = j % per_block < OPENING;
            handles.push(rt.spawn(async move {
                let began = Instant::now();
                let ok = fut.await;
                (k, ok, at.elapsed().as_micros() as u64, began.elapsed().as_micros() as u64, opening)
            }));
        }
        late_us.sort_unstable();
        (handles, late_us)
    });
    let (handles, late_us) = tokio::task::spawn_blocking(move || pacer.join().expect("pacer")).await.expect("pacer");
    let pct = |p: f64| late_us[((late_us.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!("(sends left the schedule late by p50 {:.3} ms, p99 {:.3} ms)", pct(0.5), pct(0.99));
    let mut lat = names.map(|_| <[Vec<u64>; 4]>::default());
    let mut s = names.map(|name| Stats {
        name,
        sent: 0,
        errors: 0,
        lat: Dist(Vec::new()),
        round_trip: Dist(Vec::new()),
        opening: Dist(Vec::new()),
        rest: Dist(Vec::new()),
    });
    for h in handles {
        if let Ok((k, ok, us, rt_us, opening)) = h.await {
            s[k].sent += 1;
            if ok {
                lat[k][0].push(us);
                lat[k][1].push(rt_us);
                lat[k][if opening { 2 } else { 3 }].push(us);
            } else {
                s[k].errors += 1;
            }
        }
    }
    for (k, [lat, rt, opening, rest]) in s.iter_mut().zip(lat) {
        k.lat = Dist::new(lat);
        k.round_trip = Dist::new(rt);
        k.opening = Dist::new(opening);
        k.rest = Dist::new(rest);
    }
    s
}

/// The simulator, running in this process or as a child `paymux sandbox` (killed on drop).
enum Sandboxed {
    InProcess(#[allow(dead_code)] paymux::sandbox::Sandbox),
    Process(std::process::Child),
}

impl Drop for Sandboxed {
    fn drop(&mut self) {
        if let Sandboxed::Process(c) = self {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Ports where the control port's next three are free too: `paymux sandbox` puts its
/// simulators (stripe_primary, stripe_backup, antom_hk) on control + 1, + 2, + 3.
fn consecutive_ports() -> Ports {
    loop {
        let control = free_port();
        let next: Vec<_> = (1..=3).map(|i| std::net::TcpListener::bind(("127.0.0.1", control + i))).collect();
        if next.iter().all(|l| l.is_ok()) {
            drop(next);
            return Ports {
                api: free_port(),
                admin: free_port(),
                stripe_primary: control + 1,
                stripe_backup: control + 2,
                antom: control + 3,
                control,
            };
        }
    }
}

/// Starts `paymux sandbox` on `ports` with `faults`; returns once the Stripe simulator accepts.
fn spawn_sandbox(ports: Ports, faults: &std::path::Path) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_paymux"))
        .args(["sandbox", "--listen", &format!("127.0.0.1:{}", ports.control)])
        .args(["--callback-base", &format!("http://127.0.0.1:{}", ports.api)])
        .arg("--faults")
        .arg(faults)
        // Warnings and errors only: at info it logs every dropped callback.
        .env("PAYMUX_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn paymux sandbox");
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", ports.stripe_primary)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "paymux sandbox did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and a load run does not belong in the test suite.
    if !std::env::args().any(|a| a == "--bench") {
        println!("added_latency: load script; run it with `cargo bench --bench added_latency`");
        return;
    }
    let rate = env_or("PAYMUX_LOAD_RATE", 1000);
    let secs = env_or("PAYMUX_LOAD_SECS", 30);
    let block = Duration::from_millis(env_or("PAYMUX_LOAD_BLOCK_MS", 50));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let tmp = tempfile::tempdir().unwrap();
        let in_process = std::env::var("PAYMUX_LOAD_SANDBOX").is_ok_and(|v| v == "in-process");
        let ports = if in_process { Ports::new() } else { consecutive_ports() };
        let (cfg, data) = (tmp.path().join("cfg"), tmp.path().join("data"));
        write_config(&cfg, ports, &data, 3000);
        // Callbacks are dropped: this measures the request path. (With them, each card payment
        // also brings two signed webhooks to paymux, tripling its request rate.)
        let faults = tmp.path().join("faults.yaml");
        std::fs::write(&faults, "stripe_primary: {callbacks: {drop: true}}\nstripe_backup: {callbacks: {drop: true}}\n")
            .unwrap();
        // By default the simulator is its own process (`paymux sandbox`), as a provider is
        // another party: the direct baseline then pays the same cross-process hop to it that
        // paymux does. PAYMUX_LOAD_SANDBOX=in-process runs it inside this generator's runtime,
        // where a direct request never leaves the process (a cheaper baseline than any app gets).
        let _sandbox = if in_process {
            let mut scfg = sandbox_config(ports);
            scfg.faults = paymux::sandbox::load_faults(&faults).unwrap();
            Sandboxed::InProcess(paymux::sandbox::Sandbox::start(scfg).await.unwrap())
        } else {
            Sandboxed::Process(spawn_sandbox(ports, &faults))
        };
        let pm = Paymux::start(&cfg, &data, ports);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let key = std::fs::read_to_string(root().join("sandbox/keys/stripe_primary_api_key")).unwrap();
        let stripe = Arc::new(Stripe::new(Secret::new(key.trim().to_string()), Secret::new("unused".into()), 300, 0));
        let direct_base = format!("http://127.0.0.1:{}", ports.stripe_primary);
        let run_id = paymux::domain::new_id("load");

        let direct = |phase: &'static str| {
            let (http, stripe, base, run_id) = (http.clone(), stripe.clone(), direct_base.clone(), run_id.clone());
            kind(move |i: u64| {
                let (http, stripe, base) = (http.clone(), stripe.clone(), base.clone());
                let aref = format!("{run_id}-{phase}-{i}");
                async move {
                    let md = BTreeMap::new();
                    let pmd = serde_json::json!({"token": "pm_card_visa"});
                    let req = CreateRequest {
                        payment_id: &aref,
                        attempt_ref: &aref,
                        money: Money::new(1999, Currency::parse("HKD").unwrap()).unwrap(),
                        method: Method::Visa,
                        order_id: "load",
                        customer_id: None,
                        customer_email: None,
                        payment_method_data: Some(&pmd),
                        return_url: None,
                        metadata: &md,
                        notify_url: "http://127.0.0.1:1/",
                    };
                    let w = stripe.build_create(&req).unwrap();
                    let mut b = http.post(format!("{base}{}", w.path)).body(w.body.clone());
                    for (k, v) in &w.headers {
                        b = b.header(*k, v);
                    }
                    match b.send().await {
                        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                        _ => false,
                    }
                }
            })
        };
        let splits: Sink<Split> = Arc::default();
        let via = |phase: &'static str| {
            let (http, api, run_id, splits) = (http.clone(), pm.api.clone(), run_id.clone(), splits.clone());
            kind(move |i: u64| {
                let (http, api, splits) = (http.clone(), api.clone(), splits.clone());
                let key = format!("{run_id}-{phase}-{i}");
                async move {
                    let began = Instant::now();
                    let r = http
                        .post(format!("{api}/v1/payments"))
                        .bearer_auth(KEY)
                        .header("idempotency-key", key)
                        .json(&card(&format!("load-{i}"), 1999))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().as_u16() == 201 => {
                            let timing = server_timing(r.headers());
                            let ok = r.text().await.map(|t| t.contains("\"succeeded\"")).unwrap_or(false);
                            let round_trip = began.elapsed().as_micros() as u64;
                            if let (true, Some((own, provider))) = (ok, timing) {
                                let us = |ms: f64| (ms * 1000.0).round() as u64;
                                splits.lock().unwrap().push(Split { round_trip, own: us(own), provider: us(provider) });
                            }
                            ok
                        }
                        _ => false,
                    }
                }
            })
        };
        // The floor any proxy in paymux's place pays: a round trip to a pingora service in
        // the paymux process that does nothing (GET /healthz on the admin listener), then the
        // same direct request.
        let hops: Sink<u64> = Arc::default();
        let hop_then_direct = |phase: &'static str| {
            let (http, admin, direct, hops) = (http.clone(), pm.admin.clone(), direct(phase), hops.clone());
            kind(move |i: u64| {
                let (http, admin, direct, hops) = (http.clone(), admin.clone(), direct.clone(), hops.clone());
                async move {
                    let began = Instant::now();
                    let hop = match http.get(format!("{admin}/healthz")).send().await {
                        Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                        _ => false,
                    };
                    if hop {
                        hops.lock().unwrap().push(began.elapsed().as_micros() as u64);
                    }
                    hop && direct(i).await
                }
            })
        };
        println!("warming up…");
        run(
            ["warmup-direct", "warmup-paymux", "warmup-floor"],
            rate / 2,
            2,
            block,
            [direct("w1"), via("w2"), hop_then_direct("w3")],
        )
        .await;
        let pid = pm.child.id().to_string();
        // paymux's CPU per health check of the floor, timed alone (3 s), so that its share of
        // the main run's CPU can be left out of the figure per payment.
        let c0 = cpu_seconds(&pid);
        let [checks] = run(["health checks"], rate, 3, block, [hop_then_direct("c")]).await;
        let per_check = (cpu_seconds(&pid) - c0) / checks.sent.max(1) as f64;
        let sim_pid = match &_sandbox {
            Sandboxed::Process(c) => Some(c.id().to_string()),
            Sandboxed::InProcess(_) => None,
        };
        let sim_cpu = || sim_pid.as_deref().map_or(0.0, cpu_seconds);
        let (me0, pm0, sim0, host0) = (cpu_seconds("self"), cpu_seconds(&pid), sim_cpu(), host_ticks());
        splits.lock().unwrap().clear();
        hops.lock().unwrap().clear();
        let [d, v, h] = run(
            ["direct", "via paymux", "hop + direct"],
            rate,
            secs,
            block,
            [direct("d"), via("p"), hop_then_direct("h")],
        )
        .await;
        let (me1, pm1, sim1, host1) = (cpu_seconds("self"), cpu_seconds(&pid), sim_cpu(), host_ticks());
        println!(
            "\nopen loop, {rate} req/s, {secs} s of each kind in turns of {} ms blocks, loopback, simulator {}; latency in ms from scheduled send\n",
            block.as_millis(),
            if in_process { "in this process" } else { "in its own process" }
        );
        table(&[&d, &v, &h]);
        println!(
            "\nadded by paymux: p50 {:.3} ms ({:.2}× direct), p99 {:.3} ms ({:.2}× direct)",
            v.pct(0.5) - d.pct(0.5),
            v.pct(0.5) / d.pct(0.5),
            v.pct(0.99) - d.pct(0.99),
            v.pct(0.99) / d.pct(0.99)
        );
        println!(
            "floor added by the hop alone: p50 {:.3} ms, p99 {:.3} ms",
            h.pct(0.5) - d.pct(0.5),
            h.pct(0.99) - d.pct(0.99)
        );
        // CPU per request: paymux's per payment (it is idle in direct blocks; the floor's
        // health checks are taken out at their cost timed alone), and the generator's and the
        // simulator's per request of any kind. The generator runs the same code in every run:
        // its figure tracks the machine's speed at the time.
        let per = |cpu: f64, n: usize| cpu * 1000.0 / n as f64;
        println!(
            "CPU per request: paymux {:.3} ms per payment (less {:.3} ms per health check of the floor); generator {:.3} ms, simulator {} per request",
            per(pm1 - pm0 - per_check * h.sent as f64, v.sent),
            per_check * 1000.0,
            per(me1 - me0, d.sent + v.sent + h.sent),
            match sim_pid {
                Some(_) => format!("{:.3} ms", per(sim1 - sim0, d.sent + v.sent + h.sent)),
                None => "(in the generator's)".into(),
            }
        );
        println!(
            "host: {:.1} % of this guest's CPU time was taken by the hypervisor (steal) during the run",
            (host1.1 - host0.1) as f64 * 100.0 / (host1.0 - host0.0).max(1) as f64
        );
        // Each payment split by its Server-Timing header (paymux's own account of it).
        let splits = std::mem::take(&mut *splits.lock().unwrap());
        let own = Dist::new(splits.iter().map(|s| s.own).collect());
        let provider = Dist::new(splits.iter().map(|s| s.provider).collect());
        let leg = Dist::new(splits.iter().map(|s| s.round_trip.saturating_sub(s.own + s.provider)).collect());
        let shares: Vec<String> =
            [0.1, 0.25, 0.5, 1.0, 2.5].iter().map(|&ms| format!("≤ {ms} ms {:.2} %", 100.0 - own.over(ms))).collect();
        println!(
            "paymux's own time per payment (Server-Timing, {} payments): mean {:.3} ms, p99 {:.3} ms; {}",
            own.0.len(),
            own.mean(),
            own.pct(0.99),
            shares.join(", ")
        );
        // Where a slow payment lost its time: each round trip from its own start (the
        // schedule's lateness left out), a payment through paymux split in three, and the
        // floor's do-nothing hop alone.
        let hop = Dist::new(std::mem::take(&mut *hops.lock().unwrap()));
        let parts = [
            ("direct call", &d.round_trip),
            ("via paymux", &v.round_trip),
            ("app ↔ paymux (outside its handler)", &leg),
            ("paymux own time", &own),
            ("paymux → simulator", &provider),
            ("do-nothing hop", &hop),
        ];
        println!("\n| leg | p50 | p90 | p99 | over 1 ms | over 2.5 ms | over 5 ms | over 10 ms |\n|---|---|---|---|---|---|---|---|");
        for (name, dist) in parts {
            let over: Vec<String> = [1.0, 2.5, 5.0, 10.0].iter().map(|&ms| format!("{:.2} %", dist.over(ms))).collect();
            println!(
                "| {name} | {:.3} | {:.3} | {:.3} | {} |",
                dist.pct(0.5),
                dist.pct(0.9),
                dist.pct(0.99),
                over.join(" | ")
            );
        }
        drop(pm);
    });
}
