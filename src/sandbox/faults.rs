//! Fault injection: the per-instance fault settings ([`Faults`]), their checks, and the gate
//! every simulated API operation passes through (latency, injected errors, blackhole).
//!
//! `down` is not handled here: it acts on the listening sockets (see `http.rs`), and the
//! callback faults act on outbound deliveries (see `callbacks.rs`).

use super::http::{Reply, Response};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;

/// The operation names `Faults::ops` may list.
pub const OPS: &[&str] = &["create", "query", "cancel", "refund", "capture"];

/// Longest latency a fault may add (the blackhole bound, 10 minutes).
const MAX_LATENCY_MS: u64 = 600_000;

/// What a simulated API request does, for `Faults::ops`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Query,
    Cancel,
    Refund,
    Capture,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Query => "query",
            Op::Cancel => "cancel",
            Op::Refund => "refund",
            Op::Capture => "capture",
        }
    }
}

/// Faults of one simulator instance. Every field is optional in YAML/JSON; unknown fields are
/// rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added before each matching operation is handled, in milliseconds.
    pub latency_ms: u64,
    /// Share of matching operations answered with `error_status`, 0..=100.
    pub error_rate_pct: u8,
    /// HTTP status of injected errors (default 500). The body is provider-shaped.
    pub error_status: u16,
    /// For error and blackhole: apply the operation first, then fail ("ambiguous but processed").
    pub process_before_error: bool,
    /// Read matching requests and never answer (the connection is closed after 10 minutes).
    pub blackhole: bool,
    /// Close the listening sockets (new connections get ECONNREFUSED) and drop idle
    /// keep-alive connections; clearing it binds the same addresses again.
    pub down: bool,
    /// Which operations latency/error/blackhole apply to (`create`, `query`, `cancel`,
    /// `refund`, `capture`); empty means all.
    pub ops: Vec<String>,
    /// Faults of outbound webhooks / notifies.
    pub callbacks: CallbackFaults,
    /// Apply latency/error/blackhole to this many matching operations after the faults are
    /// set, then let operations through (a transient fault); unset: every matching operation.
    pub times: Option<u64>,
    /// Matching operations these faults have met so far (shared by every copy of one setting;
    /// a new setting starts at zero).
    #[serde(skip)]
    used: Used,
}

/// A counter that does not take part in comparing or printing fault settings.
#[derive(Clone, Default)]
struct Used(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl PartialEq for Used {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Used {}

impl std::fmt::Debug for Used {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

/// Faults of the callbacks (Stripe webhooks, Antom notifies) an instance sends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackFaults {
    /// Never send callbacks.
    pub drop: bool,
    /// Send every callback twice.
    pub duplicate: bool,
    /// Wait this long before the first delivery attempt, in milliseconds.
    pub delay_ms: u64,
    /// Give up a callback that is not acknowledged this long after its first attempt, in
    /// milliseconds (default: as long as the provider retries: Stripe 3 days, Antom 24 hours).
    pub retry_for_ms: Option<u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency_ms: 0,
            error_rate_pct: 0,
            error_status: 500,
            process_before_error: false,
            blackhole: false,
            down: false,
            ops: Vec::new(),
            callbacks: CallbackFaults::default(),
            times: None,
            used: Used::default(),
        }
    }
}

/// A fault setting that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("error_rate_pct must be between 0 and 100, got {0}")]
    Rate(u8),
    #[error("error_status must be an HTTP status between 200 and 599, got {0}")]
    Status(u16),
    #[error("unknown op `{0}` in ops (expected create, query, cancel, refund or capture)")]
    Op(String),
    #[error("{field} must be at most {MAX_LATENCY_MS} ms, got {value}")]
    TooLong { field: &'static str, value: u64 },
    #[error(
        "`down` closes the listener until the fault is cleared; `times` and `ops` count operations and cannot bound it"
    )]
    DownBounded,
    #[error("{0}")]
    Syntax(String),
}

impl Faults {
    /// Checks ranges and op names.
    pub fn validate(&self) -> Result<(), FaultError> {
        if self.error_rate_pct > 100 {
            return Err(FaultError::Rate(self.error_rate_pct));
        }
        if !(200..=599).contains(&self.error_status) {
            return Err(FaultError::Status(self.error_status));
        }
        if let Some(op) = self.ops.iter().find(|o| !OPS.contains(&o.as_str())) {
            return Err(FaultError::Op(op.clone()));
        }
        if self.down && (self.times.is_some() || !self.ops.is_empty()) {
            return Err(FaultError::DownBounded);
        }
        let retry_for = self.callbacks.retry_for_ms.unwrap_or(0);
        for (field, value) in [
            ("latency_ms", self.latency_ms),
            ("callbacks.delay_ms", self.callbacks.delay_ms),
            ("callbacks.retry_for_ms", retry_for),
        ] {
            if value > MAX_LATENCY_MS {
                return Err(FaultError::TooLong { field, value });
            }
        }
        Ok(())
    }

    /// Parses and checks a JSON body (the control API's `PUT /_sandbox/faults/{instance}`).
    pub fn from_json(body: &[u8]) -> Result<Faults, FaultError> {
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| FaultError::Syntax(e.to_string()))?;
        Faults::from_value(v)
    }

    /// Reads and checks one instance's faults, given as a JSON or YAML tree.
    pub fn from_value(v: serde_json::Value) -> Result<Faults, FaultError> {
        // Fields by name only: serde would also take a list of values by position.
        if !v.is_object() {
            return Err(FaultError::Syntax("expected an object (a mapping) of fault fields".into()));
        }
        let f: Faults = serde_json::from_value(v).map_err(|e| FaultError::Syntax(e.to_string()))?;
        f.validate()?;
        Ok(f)
    }

    /// Matching operations these faults have met since they were set.
    pub fn used(&self) -> u64 {
        self.used.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether these faults apply to this `op` (counting it against `times`).
    fn covers(&self, op: Op) -> bool {
        let matching = self.ops.is_empty() || self.ops.iter().any(|o| o == op.name());
        matching && self.times.is_none_or(|n| self.used.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n)
    }
}

/// The outcome of one operation through the gate.
pub(crate) struct Gated {
    /// What the client gets.
    pub reply: Reply,
    /// The simulator's own answer, if the operation was applied (for idempotency stores).
    pub processed: Option<Response>,
}

/// Applies an instance's current faults to API operations.
#[derive(Clone)]
pub(crate) struct FaultGate {
    faults: watch::Receiver<Faults>,
}

impl FaultGate {
    pub(crate) fn new(faults: watch::Receiver<Faults>) -> Self {
        FaultGate { faults }
    }

    /// Runs `process` for `op` under the current faults; `fail(status)` builds the
    /// provider-shaped body of an injected error.
    pub(crate) async fn run(
        &self,
        op: Op,
        process: impl FnOnce() -> Response,
        fail: impl FnOnce(u16) -> Response,
    ) -> Gated {
        let f = self.faults.borrow().clone();
        if !f.covers(op) {
            let r = process();
            return Gated { reply: Reply::Respond(r.clone()), processed: Some(r) };
        }
        if f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        }
        if f.blackhole {
            let processed = f.process_before_error.then(process);
            tracing::debug!(op = op.name(), processed = processed.is_some(), "sandbox fault: blackhole");
            return Gated { reply: Reply::Blackhole, processed };
        }
        if roll(f.error_rate_pct) {
            let processed = f.process_before_error.then(process);
            tracing::debug!(
                op = op.name(),
                status = f.error_status,
                processed = processed.is_some(),
                "sandbox fault: error"
            );
            return Gated { reply: Reply::Respond(fail(f.error_status)), processed };
        }
        let r = process();
        Gated { reply: Reply::Respond(r.clone()), processed: Some(r) }
    }
}

/// True with probability `pct`/100.
fn roll(pct: u8) -> bool {
    match pct {
        0 => false,
        100.. => true,
        _ => {
            use ring::rand::{SecureRandom, SystemRandom};
            let mut b = [0u8; 4];
            // If the OS RNG fails, inject nothing rather than everything.
            SystemRandom::new().fill(&mut b).is_ok() && u32::from_le_bytes(b) % 100 < u32::from(pct)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_rejects_unknown_fields() {
        let f = Faults::from_json(b"{}").unwrap();
        assert_eq!(f, Faults::default());
        assert_eq!(f.error_status, 500);
        let f = Faults::from_json(br#"{"latency_ms":20,"ops":["create","refund"],"callbacks":{"duplicate":true}}"#)
            .unwrap();
        assert!(f.covers(Op::Create) && f.covers(Op::Refund) && !f.covers(Op::Query));
        assert!(f.callbacks.duplicate && !f.callbacks.drop);
        let e = Faults::from_json(br#"{"latency":20}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `latency`"), "{e}");
        let e = Faults::from_json(br#"{"callbacks":{"dup":true}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `dup`"), "{e}");
    }

    #[test]
    fn rejects_out_of_range_values() {
        assert_eq!(Faults::from_json(br#"{"error_rate_pct":101}"#).unwrap_err(), FaultError::Rate(101));
        assert_eq!(Faults::from_json(br#"{"error_status":99}"#).unwrap_err(), FaultError::Status(99));
        assert_eq!(Faults::from_json(br#"{"ops":["charge"]}"#).unwrap_err(), FaultError::Op("charge".into()));
        assert!(matches!(Faults::from_json(b"[5000,100,503,true]"), Err(FaultError::Syntax(_))));
        assert_eq!(Faults::from_json(br#"{"down":true,"times":1}"#).unwrap_err(), FaultError::DownBounded);
        assert!(matches!(Faults::from_json(br#"{"latency_ms":600001}"#), Err(FaultError::TooLong { .. })));
        assert!(matches!(Faults::from_json(br#"{"error_rate_pct":-1}"#), Err(FaultError::Syntax(_))));
    }

    #[test]
    fn yaml_uses_the_same_shape() {
        let f: Faults = serde_yaml::from_str("error_rate_pct: 100\nerror_status: 503\nops: [create]\n").unwrap();
        assert_eq!((f.error_rate_pct, f.error_status, f.ops.len()), (100, 503, 1));
        assert!(serde_yaml::from_str::<Faults>("blackhol: true\n").is_err());
    }

    #[test]
    fn roll_extremes() {
        assert!((0..100).all(|_| !roll(0)));
        assert!((0..100).all(|_| roll(100)));
    }

    #[tokio::test]
    async fn gate_applies_error_and_process_before_error() {
        let (tx, rx) = watch::channel(Faults::default());
        let gate = FaultGate::new(rx);
        let ok = || Response::new(200);
        let fail = |s| Response::new(s);
        let g = gate.run(Op::Create, ok, fail).await;
        assert!(matches!(g.reply, Reply::Respond(ref r) if r.status == 200));
        tx.send_replace(Faults { error_rate_pct: 100, error_status: 503, ..Faults::default() });
        let mut ran = false;
        let g = gate
            .run(
                Op::Create,
                || {
                    ran = true;
                    Response::new(200)
                },
                fail,
            )
            .await;
        assert!(matches!(g.reply, Reply::Respond(ref r) if r.status == 503));
        assert!(g.processed.is_none() && !ran);
        tx.send_replace(Faults {
            error_rate_pct: 100,
            error_status: 503,
            process_before_error: true,
            ops: vec!["create".into()],
            ..Faults::default()
        });
        let g = gate.run(Op::Create, ok, fail).await;
        assert!(matches!(g.reply, Reply::Respond(ref r) if r.status == 503));
        assert_eq!(g.processed.map(|r| r.status), Some(200));
        let g = gate.run(Op::Query, ok, fail).await;
        assert!(matches!(g.reply, Reply::Respond(ref r) if r.status == 200), "ops filter");
        tx.send_replace(Faults { blackhole: true, ..Faults::default() });
        assert!(matches!(gate.run(Op::Refund, ok, fail).await.reply, Reply::Blackhole));
        // `times`: the first two matching operations fail, then they pass; other ops do not
        // count; a new setting starts again.
        tx.send_replace(Faults::from_json(br#"{"error_rate_pct":100,"ops":["create"],"times":2}"#).unwrap());
        let status = |g: Gated| match g.reply {
            Reply::Respond(r) => r.status,
            Reply::Blackhole => 0,
        };
        assert_eq!(status(gate.run(Op::Query, ok, fail).await), 200);
        let mut got = vec![];
        for _ in 0..3 {
            got.push(status(gate.run(Op::Create, ok, fail).await));
        }
        assert_eq!(got, [500, 500, 200]);
        tx.send_replace(Faults::from_json(br#"{"error_rate_pct":100,"times":1}"#).unwrap());
        assert_eq!(status(gate.run(Op::Create, ok, fail).await), 500);
        assert_eq!(status(gate.run(Op::Create, ok, fail).await), 200);
    }
}
