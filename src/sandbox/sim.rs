//! What every provider simulator offers the sandbox (the [`Simulator`] trait), its counters,
//! and [`Instance`]: one named simulator with its live faults and listener state.

use super::faults::{FaultGate, Faults};
use super::http::{Handler, Reply, Request};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A simulator's objects by id. Boxed: a table of whole objects (a Stripe PaymentIntent is
/// ~700 bytes) moves all of them into a freshly faulted allocation each time it doubles,
/// which stalled every request for 40–190 ms at 7k, 14k, 28k objects under load; boxes keep
/// that move to 32 bytes each.
pub(crate) type Table<V> = std::collections::HashMap<String, Box<V>>;

/// Counters of one simulator instance.
#[derive(Default, Debug)]
pub(crate) struct Stats {
    /// Every request on the simulator's own port(s), payer pages included.
    pub requests: AtomicU64,
    pub payments_created: AtomicU64,
    pub payments_succeeded: AtomicU64,
    pub refunds: AtomicU64,
    pub callbacks_delivered: AtomicU64,
    pub callbacks_failed: AtomicU64,
    pub callbacks_dropped: AtomicU64,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "requests": g(&self.requests),
            "payments_created": g(&self.payments_created),
            "payments_succeeded": g(&self.payments_succeeded),
            "refunds": g(&self.refunds),
            "callbacks_delivered": g(&self.callbacks_delivered),
            "callbacks_failed": g(&self.callbacks_failed),
            "callbacks_dropped": g(&self.callbacks_dropped),
        })
    }
}

/// Why a payer action (approve, decline, authenticate) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ActionError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

/// A provider simulator.
#[async_trait::async_trait]
pub(crate) trait Simulator: Send + Sync + 'static {
    /// Answers one request on the simulator's own port(s), passing API operations through
    /// `gate`.
    async fn serve(&self, req: Request, gate: &FaultGate) -> Reply;

    /// Every payment the simulator holds, oldest first: at least
    /// `{id, status, amount, currency, reference, created}`.
    fn payments(&self) -> Vec<Value>;

    fn stats(&self) -> &Stats;

    /// A payer's action from the control API, e.g. (`payments`, id, `approve`).
    fn payer_action(&self, collection: &str, id: &str, action: &str, body: &[u8]) -> Result<Value, ActionError>;

    /// Called once a second: what happens with time alone (a payment expiring) happens here
    /// when no request comes to see it.
    fn tick(&self) {}
}

/// One named simulator with its live faults.
pub(crate) struct Instance {
    pub name: String,
    pub sim: Arc<dyn Simulator>,
    faults: watch::Sender<Faults>,
    /// How many of this instance's listeners are bound right now.
    up: Arc<watch::Sender<usize>>,
    listeners: usize,
}

impl Instance {
    pub(crate) fn new(name: String, sim: Arc<dyn Simulator>, faults: watch::Sender<Faults>, listeners: usize) -> Self {
        Instance { name, sim, faults, up: Arc::new(watch::channel(0).0), listeners }
    }

    pub(crate) fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    pub(crate) fn up_counter(&self) -> Arc<watch::Sender<usize>> {
        self.up.clone()
    }

    /// Replaces the faults and waits (up to 2 s) until the listeners reflect `down`, so a
    /// caller can rely on ECONNREFUSED (or a fresh bind) as soon as this returns.
    pub(crate) async fn set_faults(&self, f: Faults) {
        let want_up = !f.down;
        self.faults.send_replace(f);
        let n = self.listeners;
        let mut rx = self.up.subscribe();
        let settled = rx.wait_for(|up| if want_up { *up == n } else { *up == 0 });
        if tokio::time::timeout(Duration::from_secs(2), settled).await.is_err() {
            tracing::warn!(instance = %self.name, "sandbox listeners did not follow the `down` fault within 2 s");
        }
    }

    /// The HTTP handler for this instance's listeners.
    pub(crate) fn handler(&self) -> Arc<dyn Handler> {
        Arc::new(InstanceHandler { sim: self.sim.clone(), gate: FaultGate::new(self.faults.subscribe()) })
    }
}

struct InstanceHandler {
    sim: Arc<dyn Simulator>,
    gate: FaultGate,
}

#[async_trait::async_trait]
impl Handler for InstanceHandler {
    async fn handle(&self, req: Request) -> Reply {
        Stats::bump(&self.sim.stats().requests);
        self.sim.serve(req, &self.gate).await
    }
}
