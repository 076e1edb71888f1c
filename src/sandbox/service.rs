//! Starting and stopping the sandbox: listeners are bound first (so address errors surface at
//! once), then the simulators, the control API and their accept loops start on the current
//! tokio runtime; [`Sandbox`] stops them all when dropped. [`SandboxService`] runs the same
//! as a pingora background service, and [`run_standalone`] is `paymux sandbox`.

use super::antom::{AntomSetup, AntomSim};
use super::callbacks::Dispatcher;
use super::control::Control;
use super::faults::Faults;
use super::http::{serve, Endpoint};
use super::sim::{Instance, Simulator, Stats};
use super::stripe::{StripeSetup, StripeSim};
use super::{tls, AntomInstance, SandboxConfig, StripeInstance};
use crate::crypto::{RsaSigner, RsaVerifier};
use anyhow::{bail, Context};
use pingora::listeners::tls::Acceptor;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<StdListener> {
    let l = StdListener::bind(addr).with_context(|| format!("sandbox `{name}`: cannot listen on {addr}"))?;
    l.set_nonblocking(true).with_context(|| format!("sandbox `{name}`: {addr}"))?;
    Ok(l)
}

struct BoundAntom {
    cfg: AntomInstance,
    listener: StdListener,
    tls_listener: Option<StdListener>,
    merchant_key: RsaVerifier,
    signer: Arc<RsaSigner>,
}

/// A checked configuration with its listeners bound, not yet serving.
struct Bound {
    faults: std::collections::HashMap<String, Faults>,
    control: StdListener,
    stripe: Vec<(StripeInstance, StdListener)>,
    antom: Vec<BoundAntom>,
    tls: Option<Arc<Acceptor>>,
}

impl Bound {
    fn bind(cfg: SandboxConfig) -> anyhow::Result<Bound> {
        let mut names = HashSet::new();
        for n in cfg.stripe.iter().map(|s| &s.name).chain(cfg.antom.iter().map(|a| &a.name)) {
            if n.is_empty() || n.contains('/') || !names.insert(n.clone()) {
                bail!("sandbox instance names must be unique, non-empty and without `/`: `{n}`");
            }
        }
        if let Some(why) = cfg.unknown_fault_instance(&cfg.faults) {
            bail!("faults: {why}");
        }
        for (name, f) in &cfg.faults {
            f.validate().with_context(|| format!("faults for `{name}`"))?;
        }
        let control = bind("control", cfg.control_listen)?;
        let stripe = cfg
            .stripe
            .into_iter()
            .map(|s| bind(&s.name, s.listen).map(|l| (s, l)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut antom = Vec::new();
        for a in cfg.antom {
            let merchant_key = RsaVerifier::from_text(&a.merchant_public_key)
                .map_err(|e| anyhow::anyhow!("sandbox `{}`: merchant_public_key: {e}", a.name))?;
            let signer = RsaSigner::from_text(&a.provider_private_key)
                .map_err(|e| anyhow::anyhow!("sandbox `{}`: provider_private_key: {e}", a.name))?;
            let listener = bind(&a.name, a.listen)?;
            let tls_listener = a.tls_listen.map(|t| bind(&a.name, t)).transpose()?;
            antom.push(BoundAntom { cfg: a, listener, tls_listener, merchant_key, signer: Arc::new(signer) });
        }
        let tls = if antom.iter().any(|a| a.tls_listener.is_some()) { Some(tls::acceptor()?) } else { None };
        Ok(Bound { faults: cfg.faults, control, stripe, antom, tls })
    }

    /// Starts serving on the current tokio runtime.
    fn start(self) -> anyhow::Result<Sandbox> {
        let runtime = tokio::runtime::Handle::try_current().context("the sandbox must start inside a tokio runtime")?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .context("sandbox callback client")?;
        let mut instances = BTreeMap::new();
        let mut endpoints = Vec::new();
        let mut addrs = BTreeMap::new();
        let mut tls_addrs = BTreeMap::new();
        let faults = self.faults;
        // Every instance gets its faults channel, counters and callback dispatcher.
        let parts = |name: &str| {
            let (tx, rx) = watch::channel(faults.get(name).cloned().unwrap_or_default());
            let stats = Arc::new(Stats::default());
            let dispatcher =
                Dispatcher::new(client.clone(), rx.clone(), shutdown_rx.clone(), stats.clone(), runtime.clone());
            (tx, rx, stats, dispatcher)
        };
        for (s, l) in self.stripe {
            let listener = TcpListener::from_std(l)?;
            let addr = listener.local_addr()?;
            let (tx, rx, stats, dispatcher) = parts(&s.name);
            let setup = StripeSetup {
                name: s.name.clone(),
                base_url: base_url(addr),
                api_key: s.api_key,
                webhook_secret: s.webhook_secret,
                webhook_url: s.webhook_url,
            };
            let sim: Arc<dyn Simulator> = Arc::new(StripeSim::new(setup, stats, dispatcher));
            let inst = Arc::new(Instance::new(s.name.clone(), sim, tx, 1));
            endpoints.push(endpoint(&inst, listener, None, rx));
            addrs.insert(s.name.clone(), addr);
            instances.insert(s.name, inst);
        }
        for a in self.antom {
            let listener = TcpListener::from_std(a.listener)?;
            let addr = listener.local_addr()?;
            let name = a.cfg.name.clone();
            let (tx, rx, stats, dispatcher) = parts(&name);
            let setup = AntomSetup {
                name: name.clone(),
                base_url: base_url(addr),
                client_id: a.cfg.client_id,
                merchant_key: a.merchant_key,
                signer: a.signer,
            };
            let sim: Arc<dyn Simulator> = Arc::new(AntomSim::new(setup, stats, dispatcher));
            let count = 1 + usize::from(a.tls_listener.is_some());
            let inst = Arc::new(Instance::new(name.clone(), sim, tx, count));
            endpoints.push(endpoint(&inst, listener, None, rx.clone()));
            if let (Some(t), Some(acceptor)) = (a.tls_listener, &self.tls) {
                let t = TcpListener::from_std(t)?;
                tls_addrs.insert(name.clone(), t.local_addr()?);
                endpoints.push(endpoint(&inst, t, Some(acceptor.clone()), rx));
            }
            addrs.insert(name.clone(), addr);
            instances.insert(name, inst);
        }
        let sims: Vec<Arc<dyn Simulator>> = instances.values().map(|i| i.sim.clone()).collect();
        runtime.spawn(tick(sims, shutdown_rx.clone()));
        let control = TcpListener::from_std(self.control)?;
        let control_addr = control.local_addr()?;
        endpoints.push(Endpoint {
            listener: control,
            tls: None,
            handler: Arc::new(Control::new(instances)),
            faults: None,
            up: None,
        });
        for ep in endpoints {
            runtime.spawn(serve(ep, shutdown_rx.clone()));
        }
        tracing::info!(control = %control_addr, instances = ?addrs, tls = ?tls_addrs, "sandbox started");
        Ok(Sandbox { shutdown, control: control_addr, addrs, tls_addrs })
    }
}

fn endpoint(
    inst: &Instance,
    listener: TcpListener,
    tls: Option<Arc<Acceptor>>,
    faults: watch::Receiver<Faults>,
) -> Endpoint {
    Endpoint { listener, tls, handler: inst.handler(), faults: Some(faults), up: Some(inst.up_counter()) }
}

/// Ticks every simulator once a second until shutdown (see [`Simulator::tick`]).
async fn tick(sims: Vec<Arc<dyn Simulator>>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => sims.iter().for_each(|s| s.tick()),
            _ = super::http::stopped(&mut shutdown) => return,
        }
    }
}

/// The URL browsers reach a simulator at (loopback for wildcard listeners).
fn base_url(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

/// A running sandbox. Dropping it (or [`Sandbox::shutdown`]) stops every listener,
/// connection and pending callback.
pub struct Sandbox {
    shutdown: watch::Sender<bool>,
    control: SocketAddr,
    addrs: BTreeMap<String, SocketAddr>,
    tls_addrs: BTreeMap<String, SocketAddr>,
}

impl Sandbox {
    /// Binds every listener and starts serving on the current tokio runtime.
    pub async fn start(cfg: SandboxConfig) -> anyhow::Result<Sandbox> {
        Bound::bind(cfg)?.start()
    }

    /// Stops everything (idempotent).
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// The control API's bound address (useful with port 0).
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }

    /// The plain-HTTP address an instance is bound to.
    pub fn addr(&self, instance: &str) -> Option<SocketAddr> {
        self.addrs.get(instance).copied()
    }

    /// The HTTPS address of an Antom instance with `tls_listen`.
    pub fn tls_addr(&self, instance: &str) -> Option<SocketAddr> {
        self.tls_addrs.get(instance).copied()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The sandbox as a pingora background service: started on that service's runtime, stopped
/// by pingora's shutdown watch.
pub struct SandboxService {
    pending: Mutex<Option<Bound>>,
    control: SocketAddr,
    instances: Vec<(String, &'static str, String)>,
}

impl SandboxService {
    /// Binds every listener now, so address and key errors surface before the server runs.
    pub fn bind(cfg: SandboxConfig) -> anyhow::Result<Self> {
        let bound = Bound::bind(cfg)?;
        let addr = |l: &StdListener| l.local_addr().context("sandbox listener address");
        let mut instances = Vec::new();
        for (s, l) in &bound.stripe {
            instances.push((s.name.clone(), "stripe", base_url(addr(l)?)));
        }
        for a in &bound.antom {
            instances.push((a.cfg.name.clone(), "antom", base_url(addr(&a.listener)?)));
            if let Some(t) = &a.tls_listener {
                instances.push((a.cfg.name.clone(), "antom", base_url(addr(t)?).replacen("http", "https", 1)));
            }
        }
        Ok(SandboxService { control: addr(&bound.control)?, instances, pending: Mutex::new(Some(bound)) })
    }

    /// Where the control API listens, as bound (an OS-picked port shows as the real one).
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }

    /// Each simulator listener: instance name, provider kind and base URL, as bound (an
    /// instance with a TLS listener too is listed twice).
    pub fn instances(&self) -> &[(String, &'static str, String)] {
        &self.instances
    }
}

#[async_trait::async_trait]
impl BackgroundService for SandboxService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner()).take();
        let started = match pending {
            Some(b) => b.start(),
            None => {
                tracing::warn!("sandbox service started twice; ignoring");
                return;
            }
        };
        match started {
            Ok(sandbox) => {
                let _ = shutdown.wait_for(|s| *s).await;
                tracing::info!("sandbox stopping");
                sandbox.shutdown();
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "sandbox failed to start"),
        }
    }
}

/// `paymux sandbox`: runs the bound sandbox in a pingora server until SIGINT or SIGTERM.
pub fn run_standalone(service: SandboxService) {
    // Nothing to drain: leave promptly on SIGTERM.
    let conf =
        ServerConf { grace_period_seconds: Some(0), graceful_shutdown_timeout_seconds: Some(1), ..Default::default() };
    let mut server = Server::new_with_opt_and_conf(None::<Opt>, conf);
    server.bootstrap();
    server.add_service(background_service("paymux sandbox", service));
    server.run(RunArgs::default());
}
