//! Outbound callbacks (Stripe webhooks, Antom notifies): headers are signed afresh for every
//! attempt, failed deliveries are retried with exponential backoff for as long as the
//! provider retries (its retry window), and the instance's callback faults apply (drop,
//! duplicate, delay, a shorter retry window).

use super::faults::Faults;
use super::http::stopped;
use super::sim::Stats;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`]. The providers start
/// slower (Antom's first retry comes after minutes); a sandbox retries sooner so that a
/// restarted receiver gets its callbacks in seconds, and keeps on as long as they do.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long Stripe retries a webhook that is not acknowledged (live mode: up to 3 days).
pub(crate) const STRIPE_RETRY_WINDOW: Duration = Duration::from_secs(3 * 24 * 3600);
/// How long Antom resends a notify that is not acknowledged (its schedule ends ~24 h on).
pub(crate) const ANTOM_RETRY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Per-attempt timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// What counts as an acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ack {
    /// Any 2xx (Stripe).
    Success,
    /// HTTP 200 with `{"result":{"resultStatus":"S",...}}` (Antom).
    AntomResult,
}

/// Builds the headers of one attempt (signatures carry the attempt's timestamp).
pub(crate) type SignFn = Box<dyn Fn(&[u8]) -> Vec<(String, String)> + Send + Sync>;

/// One callback to deliver.
pub(crate) struct Callback {
    pub url: String,
    /// For logs, e.g. `payment_intent.succeeded evt_…`.
    pub label: String,
    pub body: Bytes,
    pub sign: SignFn,
    pub ack: Ack,
    /// How long the provider keeps retrying it (unless the faults set a shorter window).
    pub retry_window: Duration,
}

/// Sends an instance's callbacks in the background until the sandbox shuts down.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    client: reqwest::Client,
    faults: watch::Receiver<Faults>,
    shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
    runtime: tokio::runtime::Handle,
}

impl Dispatcher {
    /// Deliveries run on `runtime` until `shutdown`.
    pub(crate) fn new(
        client: reqwest::Client,
        faults: watch::Receiver<Faults>,
        shutdown: watch::Receiver<bool>,
        stats: Arc<Stats>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Dispatcher { client, faults, shutdown, stats, runtime }
    }

    /// Queues a callback under the instance's current callback faults.
    pub(crate) fn send(&self, cb: Callback) {
        let faults = self.faults.borrow().callbacks.clone();
        if faults.drop {
            tracing::info!(url = %cb.url, callback = %cb.label, "sandbox fault: callback dropped");
            Stats::bump(&self.stats.callbacks_dropped);
            return;
        }
        let this = self.clone();
        let mut shutdown = self.shutdown.clone();
        self.runtime.spawn(async move {
            let work = async {
                if faults.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
                }
                let window = faults.retry_for_ms.map_or(cb.retry_window, Duration::from_millis);
                // A duplicate is delivered beside the first, not after it is acknowledged (or,
                // days later, given up).
                if faults.duplicate {
                    tokio::join!(this.deliver(&cb, window), this.deliver(&cb, window));
                } else {
                    this.deliver(&cb, window).await;
                }
            };
            tokio::select! {
                _ = work => {}
                _ = stopped(&mut shutdown) => {}
            }
        });
    }

    /// Delivers `cb`, retrying until it is acknowledged or the next attempt would come more
    /// than `window` after the first.
    async fn deliver(&self, cb: &Callback, window: Duration) -> bool {
        let first = tokio::time::Instant::now();
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1u32.. {
            let mut req = self.client.post(&cb.url).timeout(ATTEMPT_TIMEOUT).body(cb.body.clone());
            for (k, v) in (cb.sign)(&cb.body) {
                req = req.header(k, v);
            }
            let outcome = match req.send().await {
                Ok(resp) => acknowledged(cb.ack, resp).await,
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => {
                    tracing::debug!(url = %cb.url, callback = %cb.label, attempt, "sandbox callback delivered");
                    Stats::bump(&self.stats.callbacks_delivered);
                    return true;
                }
                Err(why) => {
                    tracing::warn!(url = %cb.url, callback = %cb.label, attempt, %why, "sandbox callback not acknowledged");
                }
            }
            if first.elapsed() + backoff > window {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        tracing::warn!(url = %cb.url, callback = %cb.label, "sandbox callback given up: its retry window has passed");
        Stats::bump(&self.stats.callbacks_failed);
        false
    }
}

async fn acknowledged(ack: Ack, resp: reqwest::Response) -> Result<(), String> {
    let status = resp.status();
    match ack {
        Ack::Success if status.is_success() => Ok(()),
        Ack::Success => Err(format!("HTTP {status}")),
        Ack::AntomResult => {
            if status != reqwest::StatusCode::OK {
                return Err(format!("HTTP {status}"));
            }
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| "ack is not JSON".to_string())?;
            match v.pointer("/result/resultStatus").and_then(|s| s.as_str()) {
                Some("S") => Ok(()),
                other => Err(format!("ack resultStatus {other:?}")),
            }
        }
    }
}
