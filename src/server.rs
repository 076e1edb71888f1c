//! Process assembly: loads the policy, opens the store and audit log, and builds the pingora
//! server with its services (payments API, admin, reload watcher, housekeeping).

use crate::admin::AdminApp;
use crate::api::{ApiApp, AppState};
use crate::audit::{AuditLog, Event};
use crate::config::{self, Overrides};
use crate::engine::Engine;
use crate::http_service::HttpService;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::reload::{ReloadService, Reloader};
use crate::sniff::Sniff;
use crate::store::{sqlite::SqliteStore, Store};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid config:\n{}", config::diag::render(.0))]
    Config(Vec<config::Diagnostic>),
    #[error("{0}")]
    Other(String),
}

/// How often journaled writes are applied to the database: batches of a few milliseconds
/// share one commit, and what waits in the journal stays small (every other store call
/// applies it first anyway).
const JOURNAL_APPLY_EVERY: Duration = Duration::from_millis(10);

/// How long an address in use is tried again at start (a previous instance may still be
/// stopping).
const LISTEN_RETRY: Duration = Duration::from_secs(10);

/// Refuses a data directory whose audit log has records but whose database is missing or
/// empty (deleted, truncated, or another directory mounted beside the log): started afresh,
/// paymux would take every retried Idempotency-Key for a new payment and charge again.
fn refuse_lost_store(dir: &std::path::Path) -> Result<(), StartError> {
    use crate::store::sqlite::DB_FILE;
    // Only a file that is not there counts as empty (one that cannot be read is reported by
    // whatever opens it).
    let size = |f: &str| match std::fs::metadata(dir.join(f)) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(_) => None,
    };
    if size(crate::audit::FILE).is_some_and(|n| n > 0) && size(DB_FILE) == Some(0) {
        return Err(StartError::Other(format!(
            "{dir}: {audit} records this store's history, but {DB_FILE} is missing or empty (deleted, or \
             not the directory the log belongs with); starting afresh would take retried payments \
             for new ones. Restore {DB_FILE} from a backup, or, to start a new store on purpose, move \
             {audit} and any journal-*.log out of the directory",
            dir = dir.display(),
            audit = crate::audit::FILE,
        )));
    }
    Ok(())
}

/// What `paymux serve` was asked for.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub config_dir: PathBuf,
    pub overrides: Overrides,
    pub threads: usize,
    /// Run the provider simulators too, their control API on this address (`--with-sandbox`).
    pub sandbox_control: Option<std::net::SocketAddr>,
}

/// A built server, ready to run, plus what callers may want to print.
pub struct Built {
    pub server: Server,
    pub policy: Arc<ArcSwap<Policy>>,
}

/// Periodic work: reconciliation, idempotency expiry, DNS refresh, closing provider
/// connections idle too long.
struct Housekeeping {
    engine: Engine,
    policy: Arc<ArcSwap<Policy>>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, shutdown: ShutdownWatch) {
        // Three loops: payments due a status query, watched attempts and pending refunds, and
        // the store's upkeep; none waits on another's providers (up to a channel's attempt
        // timeout per query).
        tokio::join!(
            self.every_interval(shutdown.clone(), || self.engine.reconcile_once(&self.policy)),
            self.every_interval(shutdown.clone(), || self.engine.reconcile_others_once(&self.policy)),
            self.upkeep(shutdown.clone()),
            announce_stop(shutdown)
        );
    }
}

/// Says in the log that a stop began, and how (pingora acts on the signals; it says nothing
/// an operator sees): SIGTERM lets the requests in flight finish first, SIGINT does not wait.
async fn announce_stop(mut shutdown: ShutdownWatch) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        // The signal first: pingora may flip `shutdown` at the same moment.
        biased;
        _ = term.recv() => tracing::info!("SIGTERM: stopping; no new connections, requests in flight get their deadline and the grace period"),
        _ = int.recv() => tracing::info!("SIGINT: stopping now"),
        _ = shutdown.changed() => {}
    }
}

impl Housekeeping {
    /// Runs `pass` every reconciler interval (after the last one ended) until shutdown.
    async fn every_interval<F: std::future::Future>(&self, mut shutdown: ShutdownWatch, pass: impl Fn() -> F) {
        loop {
            let interval = self.policy.load().server.reconcile_interval;
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            pass().await;
        }
    }

    /// Idle provider connections, the store's checkpoint, idempotency expiry, DNS refresh.
    async fn upkeep(&self, mut shutdown: ShutdownWatch) {
        let mut last_expiry = tokio::time::Instant::now();
        let mut last_dns = tokio::time::Instant::now();
        loop {
            let interval = self.policy.load().server.reconcile_interval;
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            crate::connector::transport::purge_idle();
            let store = self.engine.store.clone();
            match tokio::task::spawn_blocking(move || store.checkpoint()).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "store checkpoint failed"),
                Err(e) => tracing::warn!(error = %e, "store checkpoint task failed"),
                Ok(Ok(())) => {}
            }
            if last_expiry.elapsed() > Duration::from_secs(60) {
                last_expiry = tokio::time::Instant::now();
                let now = crate::store::now_ms();
                if let Err(e) = crate::store::call(&self.engine.store, move |s| s.idem_expire(now)).await {
                    tracing::error!(error = %e, "idempotency expiry failed");
                }
            }
            if last_dns.elapsed() > Duration::from_secs(60) {
                last_dns = tokio::time::Instant::now();
                let _ =
                    tokio::task::spawn_blocking(|| crate::connector::transport::DnsCache::global().refresh_all()).await;
            }
        }
    }
}

/// Channels that hold unsettled payments, pending refunds or watched attempts but that the
/// policy neither configures nor keeps as retired, with how many items each holds.
pub fn stranded_channels(store: &dyn Store, policy: &crate::policy::Policy) -> Vec<(String, i64)> {
    match store.open_work_by_channel() {
        Ok(open) => open.into_iter().filter(|(c, _)| policy.holding_channel(c).is_none()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not list the channels holding unsettled work");
            vec![]
        }
    }
}

/// Fails when `addr` cannot be listened on (another process holds it, no permission, not an
/// address of this machine). pingora would retry for a while and then stop only that
/// listener's thread, leaving a process that looks up but serves nothing there (and a
/// readiness probe that may reach whoever holds the port). An address in use is tried again
/// for a while, as pingora does: a previous instance may still be draining. Binds the first
/// address a host name resolves to, the one pingora takes; returns the listener, to be
/// dropped before pingora binds.
fn can_listen(what: &str, addr: &str) -> Result<std::net::TcpListener, StartError> {
    use std::net::ToSocketAddrs;
    let fail = |e: std::io::Error| StartError::Other(format!("cannot listen on {addr} ({what}): {e}"));
    let first = addr
        .to_socket_addrs()
        .map_err(fail)?
        .next()
        .ok_or_else(|| fail(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))?;
    let deadline = std::time::Instant::now() + LISTEN_RETRY;
    loop {
        match std::net::TcpListener::bind(first) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                tracing::warn!(%addr, what, "address in use; trying again");
                std::thread::sleep(Duration::from_millis(500));
            }
            r => return r.map_err(fail),
        }
    }
}

/// Builds the server: every service added, nothing running yet.
pub fn build(opts: &ServeOptions) -> Result<Built, StartError> {
    let policy = config::load_dir(&opts.config_dir, &opts.overrides).map_err(StartError::Config)?;
    let s = policy.server.clone();
    // A data directory another paymux holds is said at once, before waiting on the ports
    // that process holds too.
    SqliteStore::check_free(&s.data_dir).map_err(|e| StartError::Other(e.to_string()))?;
    // Both held at once, so that two addresses overlapping each other are caught too.
    let api = can_listen("payments API", &s.listen)?;
    let admin = can_listen("admin", &s.admin_listen)?;
    drop((api, admin));
    // The simulators are bound now too: a port in use stops the start before anything is
    // opened or recorded, rather than leaving paymux running against simulators not there.
    let sandbox = match opts.sandbox_control {
        Some(control) => Some(
            crate::sandbox::SandboxService::bind(crate::sandbox::SandboxConfig::at(control, &s.public_base_url))
                .map_err(|e| StartError::Other(format!("{e:#}")))?,
        ),
        None => None,
    };
    refuse_lost_store(&s.data_dir)?;
    let sqlite =
        Arc::new(SqliteStore::open(&s.data_dir, s.synchronous_full).map_err(|e| StartError::Other(e.to_string()))?);
    SqliteStore::spawn_applier(&sqlite, JOURNAL_APPLY_EVERY);
    let store: Arc<dyn Store> = sqlite;
    let audit = AuditLog::open(&s.data_dir, s.synchronous_full).map_err(|e| StartError::Other(e.to_string()))?;
    let (queued, failed) =
        store.recover_interrupted(crate::store::now_ms()).map_err(|e| StartError::Other(e.to_string()))?;
    if queued + failed > 0 {
        tracing::warn!(queued, failed, "recovered payments interrupted by a previous stop");
    }
    // A channel removed from the config while paymux was stopped cannot serve the payments,
    // refunds or watched attempts it still holds: say so now rather than leave them silent.
    let stranded = stranded_channels(store.as_ref(), &policy);
    for (channel, open) in &stranded {
        tracing::warn!(
            channel = %channel,
            open,
            "channel is not configured but holds unsettled payments, refunds or watched attempts; \
             they stay as they are until it is configured again"
        );
    }
    let metrics = Arc::new(Metrics::new());
    metrics.set_version(&policy.version);
    metrics.init_series(&policy);
    crate::api::init_series(&metrics);
    audit.record_blocking(Event {
        request_id: None,
        actor: "system".into(),
        action: "server.start",
        payment_id: None,
        outcome: "started".into(),
        details: serde_json::json!({
            "policy_version": policy.version,
            "listen": s.listen,
            "admin_listen": s.admin_listen,
            "stranded_channels": stranded.iter().map(|(c, n)| serde_json::json!({"channel": c, "open": n})).collect::<Vec<_>>(),
        }),
    });
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let engine = Engine {
        store: store.clone(),
        audit: audit.clone(),
        metrics: metrics.clone(),
        retry: Default::default(),
        refunds_in_flight: Default::default(),
        unstored: Default::default(),
    };
    let reloader = Arc::new(Reloader::new(
        opts.config_dir.clone(),
        opts.overrides.clone(),
        policy.clone(),
        metrics.clone(),
        audit,
        store,
    ));

    // On SIGTERM pingora stops accepting, lets the requests in flight run for the grace
    // period, then drops what is left: a payment charged meanwhile would get no answer. So
    // the grace period covers a request's whole deadline (a stop takes that long).
    let grace = (policy.load().server.request_deadline.as_millis() as u64).div_ceil(1000) + 1;
    let conf = ServerConf {
        threads: opts.threads.max(1),
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(5),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let state = Arc::new(AppState { policy: policy.clone(), engine: engine.clone() });
    let options = |h2c: bool| {
        let mut o = HttpServerOptions::default();
        o.h2c = h2c;
        // An HTTP/2 connection with no stream open is closed after the keep-alive time an
        // idle HTTP/1.1 connection gets (without it, one never opening a stream stayed open).
        o.h2_idle_timeout = Some(std::time::Duration::from_secs(60));
        o
    };
    // HTTP/1.1 and HTTP/2 (prior knowledge on cleartext, ALPN on TLS), told apart with a
    // deadline (`sniff`).
    let api_app = |h2c| {
        Arc::new(HttpService {
            app: ApiApp { state: state.clone() },
            options: options(h2c),
            metrics: Some(metrics.clone()),
            audit: Some(engine.audit.clone()),
            policy: policy.clone(),
        })
    };
    let mut api = Service::new("payments api".into(), Sniff { h2c: api_app(true), h1: api_app(false) });
    match &s.tls {
        Some((cert, key)) => {
            let mut tls =
                pingora::listeners::tls::TlsSettings::intermediate(&cert.to_string_lossy(), &key.to_string_lossy())
                    .map_err(|e| StartError::Other(format!("TLS: {e}")))?;
            tls.enable_h2();
            api.add_tls_with_settings(&s.listen, None, tls);
        }
        None => api.add_tcp(&s.listen),
    }
    server.add_service(api);

    // One for both admin services (h2c and HTTP/1.1), so probes of either share it.
    let write_probe = Arc::new(tokio::sync::Mutex::new(crate::admin::WriteProbe::default()));
    let admin_app = |h2c| {
        Arc::new(HttpService {
            app: AdminApp {
                policy: policy.clone(),
                engine: engine.clone(),
                reloader: reloader.clone(),
                write_probe: write_probe.clone(),
            },
            options: options(h2c),
            metrics: None,
            audit: None,
            policy: policy.clone(),
        })
    };
    let mut admin = Service::new("admin".into(), Sniff { h2c: admin_app(true), h1: admin_app(false) });
    admin.add_tcp(&s.admin_listen);
    server.add_service(admin);
    server.add_service(background_service(
        "config reload",
        ReloadService { reloader, debounce: Duration::from_millis(300) },
    ));
    server.add_service(background_service("housekeeping", Housekeeping { engine, policy: policy.clone() }));
    if let Some(sandbox) = sandbox {
        server.add_service(background_service("sandbox", sandbox));
    }
    Ok(Built { server, policy })
}
