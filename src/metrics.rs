//! Prometheus metrics. Handles are created once at startup; labels are bounded sets (endpoint
//! names, channel ids from the policy, methods, outcomes) and never an order or payment id.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

/// All paymux metrics.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub request_latency: HistogramVec,
    pub payments: IntCounterVec,
    pub channel_attempts: IntCounterVec,
    pub channel_latency: HistogramVec,
    pub failovers: IntCounterVec,
    pub webhooks: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_version: IntGaugeVec,
    pub reconciliations: IntCounterVec,
    pub orphan_reversals: IntCounterVec,
    /// Set from the store at each scrape.
    pub store_journal_backlog: IntGauge,
}

const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    /// Registers every metric in a fresh registry; outcome series that matter from the first
    /// scrape (reload outcomes) start at zero rather than being absent.
    pub fn new() -> Metrics {
        let m = Self::register();
        for o in ["applied", "rejected", "unchanged"] {
            m.config_reloads.with_label_values(&[o]);
        }
        m
    }

    fn register() -> Metrics {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                // Names are constants, unique within this fresh registry: registration cannot fail.
                registry.register(Box::new(m.clone())).expect("metric registration");
                m
            }};
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("metric")
        };
        let hist = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels).expect("metric")
        };
        Metrics {
            http_requests: reg!(counter(
                "paymux_http_requests_total",
                "API requests by endpoint and status code.",
                &["endpoint", "status"]
            )),
            request_duration: reg!(hist(
                "paymux_request_duration_seconds",
                "paymux's own time on an API request: from its headers being read to its response being built, \
                 minus its provider calls (each from taking a connection to its answer being read back).",
                &["endpoint"]
            )),
            request_latency: reg!(hist(
                "paymux_request_latency_seconds",
                "Time from an API request's headers being read to its response being built, provider calls included.",
                &["endpoint"]
            )),
            payments: reg!(counter(
                "paymux_payments_total",
                "Payments entering a status, by method and holding channel: once in the status the create call returned, once in each status reached later (callback, sync, reconciler, cancel, refund).",
                &["method", "channel", "status"]
            )),
            channel_attempts: reg!(counter(
                "paymux_channel_attempts_total",
                "Provider calls by channel and outcome.",
                &["channel", "outcome"]
            )),
            channel_latency: reg!(hist(
                "paymux_channel_latency_seconds",
                "Latency of provider calls by channel.",
                &["channel"]
            )),
            failovers: reg!(counter(
                "paymux_failovers_total",
                "Moves from one channel to the next, by reason: connect_failed, not_sendable, not_processed, ambiguous_not_processed.",
                &["from", "to", "reason"]
            )),
            webhooks: reg!(counter(
                "paymux_webhooks_total",
                "Provider callbacks by channel and outcome.",
                &["channel", "outcome"]
            )),
            config_reloads: reg!(counter(
                "paymux_config_reloads_total",
                "Config reloads by outcome (applied, rejected, unchanged).",
                &["outcome"]
            )),
            config_version: reg!(IntGaugeVec::new(
                Opts::new("paymux_config_version_info", "The policy version being served (value 1)."),
                &["version"]
            )
            .expect("metric")),
            reconciliations: reg!(counter(
                "paymux_reconciliations_total",
                "Background status queries by channel and result.",
                &["channel", "result"]
            )),
            orphan_reversals: reg!(counter(
                "paymux_orphan_reversals_total",
                "Payments found processed on a channel paymux had moved on from, and reversed.",
                &["channel", "result"]
            )),
            store_journal_backlog: reg!(IntGauge::new(
                "paymux_store_journal_backlog",
                "Store writes acknowledged from the write-ahead journal and not yet applied to the database \
                 (a few milliseconds' worth normally; growing means the database is not taking them).",
            )
            .expect("metric")),
            registry,
        }
    }

    /// Creates, at zero, every series the policy makes possible (per channel: attempt and
    /// callback outcomes, latency, payment statuses per method it serves; failovers between
    /// channels that share a route), so dashboards and alerts see 0 rather than no data
    /// before the first event. Outcome names here are the ones the engine uses.
    pub fn init_series(&self, policy: &crate::policy::Policy) {
        const ATTEMPTS: &[&str] = &[
            "accepted",
            "declined",
            "not_sent",
            "not_processed",
            "accepted_after_query",
            "not_found_after_query",
            "unknown",
        ];
        const WEBHOOKS: &[&str] =
            &["applied", "unchanged", "duplicate", "rejected", "deferred", "orphan", "stale", "unmatched", "ignored"];
        const FAILOVERS: &[&str] = &["connect_failed", "not_sendable", "not_processed", "ambiguous_not_processed"];
        for ch in &policy.channels {
            let id = ch.id.as_str();
            self.channel_latency.with_label_values(&[id]);
            for o in ATTEMPTS {
                self.channel_attempts.with_label_values(&[id, o]);
            }
            for o in WEBHOOKS {
                self.webhooks.with_label_values(&[id, o]);
            }
            for r in ["found", "not_found", "unknown", "refund"] {
                self.reconciliations.with_label_values(&[id, r]);
            }
            for r in ["reversed", "failed"] {
                self.orphan_reversals.with_label_values(&[id, r]);
            }
            for m in ch.methods.iter() {
                for s in crate::domain::PaymentStatus::ALL {
                    self.payments.with_label_values(&[m.as_str(), id, s.as_str()]);
                }
                // A payment no channel took (every one unreachable or refusing) fails on none.
                self.payments.with_label_values(&[m.as_str(), "none", "failed"]);
            }
        }
        // A failover goes forward through a target's channels; a split's weighted channels
        // come in either order (whichever the hash picks first).
        let mut pairs = std::collections::BTreeSet::new();
        for t in policy.router.targets() {
            let chs = t.channels();
            for (i, &a) in chs.iter().enumerate() {
                pairs.extend(chs[i + 1..].iter().filter(|&&b| b != a).map(|&b| (a, b)));
            }
            if let crate::policy::routing::Target::Split { weighted, .. } = t {
                for &(a, _) in weighted {
                    pairs.extend(weighted.iter().filter(|(b, _)| *b != a).map(|&(b, _)| (a, b)));
                }
            }
        }
        for (a, b) in pairs {
            let (a, b) = (policy.channels[a].id.as_str(), policy.channels[b].id.as_str());
            for r in FAILOVERS {
                self.failovers.with_label_values(&[a, b, r]);
            }
        }
    }

    /// Marks `version` as the one being served.
    pub fn set_version(&self, version: &str) {
        self.config_version.reset();
        self.config_version.with_label_values(&[version]).set(1);
    }

    /// Text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

tokio::task_local! {
    /// Time the API request running in this task has spent waiting on providers.
    static PROVIDER_WAIT: Cell<Duration>;
}

/// Runs the handling of one API request; returns its output and the time the provider calls
/// made inside it took (each counted by [`provider_call`]).
pub async fn with_provider_clock<F: Future>(f: F) -> (F::Output, Duration) {
    PROVIDER_WAIT
        .scope(Cell::new(Duration::ZERO), async move {
            let out = f.await;
            (out, PROVIDER_WAIT.with(Cell::get))
        })
        .await
}

/// Counts a provider call's duration toward the API request running in this task, if any
/// (the reconciler and other background work run outside one).
pub fn provider_call(took: Duration) {
    let _ = PROVIDER_WAIT.try_with(|w| w.set(w.get() + took));
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
