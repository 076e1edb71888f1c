//! Durable state behind one trait: payments, attempts, refunds, idempotency records and seen
//! webhook ids. The shipped backend is embedded SQLite in WAL mode ([`sqlite`]); a server
//! database can implement the same trait later.
//!
//! Every method is synchronous and short; async callers go through [`call`], which runs it on
//! the blocking pool so a slow fsync never stalls an async worker.

pub mod journal;
pub mod keyset;
pub mod sqlite;

use crate::domain::{Currency, Method, PaymentStatus};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A payment as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentRow {
    pub id: String,
    pub api_key_id: String,
    pub order_id: String,
    pub method: Method,
    pub amount: i64,
    pub currency: Currency,
    pub status: PaymentStatus,
    /// Channel holding the payment (the one that processed it), if any yet.
    pub channel: Option<String>,
    /// Attempt reference at the holding channel.
    pub attempt_ref: Option<String>,
    pub provider_ref: Option<String>,
    pub route_rule: String,
    pub next_action: Option<serde_json::Value>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub refunded: i64,
    pub metadata: serde_json::Value,
    pub customer: serde_json::Value,
    pub return_url: Option<String>,
    pub policy_version: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Unix ms of the next background status query; `None` when nothing is pending.
    pub reconcile_at: Option<i64>,
    pub reconcile_backoff_ms: i64,
}

impl PaymentRow {
    /// Whether the amount and currency a provider states about a payment (when it states
    /// them) are this one's: what it says about another amount is about something else,
    /// whatever reference it carries.
    pub fn is_for(&self, stated: Option<crate::domain::Money>) -> bool {
        stated.is_none_or(|m| m.minor() == self.amount && m.currency() == self.currency)
    }
}

/// One call to a provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRow {
    pub payment_id: String,
    pub n: i64,
    pub channel: String,
    pub attempt_ref: String,
    /// `pending` until it has an outcome: accepted, declined, not_processed, ambiguous,
    /// not_found (ambiguous, then shown unprocessed), unknown (ambiguous, still unresolved).
    pub outcome: String,
    pub error_code: Option<String>,
    pub latency_ms: i64,
    pub provider_ref: Option<String>,
    pub started_at: i64,
    /// An ambiguous attempt the engine moved on from; the reconciler keeps checking that it
    /// never completes (and reverses it if it does).
    pub watch: bool,
}

impl AttemptRow {
    /// Attempt `n` of a payment on `channel`, about to be sent: stored before any byte leaves.
    pub fn pending(payment_id: &str, n: i64, channel: &str, started_at: i64) -> AttemptRow {
        AttemptRow {
            payment_id: payment_id.to_string(),
            n,
            channel: channel.to_string(),
            attempt_ref: attempt_ref(payment_id, n),
            outcome: "pending".into(),
            error_code: None,
            latency_ms: 0,
            provider_ref: None,
            started_at,
            watch: false,
        }
    }
}

/// The reference of attempt `n` of a payment, sent to the provider as its idempotency
/// reference: `<payment id>-a<n>`.
pub fn attempt_ref(payment_id: &str, n: i64) -> String {
    format!("{payment_id}-a{n}")
}

/// The payment id and attempt number an [`attempt_ref`] names.
pub fn parse_attempt_ref(r: &str) -> Option<(&str, i64)> {
    let (payment_id, n) = r.rsplit_once("-a")?;
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    (!payment_id.is_empty()).then_some((payment_id, n))
}

/// A refund as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRow {
    pub id: String,
    pub payment_id: String,
    pub amount: i64,
    pub currency: Currency,
    /// pending | succeeded | failed
    pub status: String,
    pub reason: Option<String>,
    pub provider_refund_ref: Option<String>,
    pub error_code: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The error code of a failure paymux inferred (the provider showed no such payment): the one
/// final status a provider's later word can still correct (the store lets `succeeded` over it).
pub const INFERRED_FAILURE: &str = "provider_did_not_process";

/// What [`Store::update_refund`] did.
#[derive(Debug)]
pub struct RefundWrite {
    /// The refund was written (it still had the status its writer read).
    pub written: bool,
    /// The payment as the settlement left it, and the status it replaced, when its refunded
    /// total or status changed.
    pub settled: Option<(PaymentRow, PaymentStatus)>,
}

/// One write of a [`Store::write_batch`]. Serialisable: a batch may be recorded in a
/// write-ahead journal before it reaches the database ([`journal`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Write {
    InsertPayment(PaymentRow),
    UpdatePayment(PaymentRow),
    InsertAttempt(AttemptRow),
    UpdateAttempt(AttemptRow),
    /// Claims an idempotency key. When a live record already holds it, the whole batch is
    /// rolled back and fails with [`StoreError::KeyTaken`] carrying that record.
    ClaimIdempotency(IdemRecord),
    /// Stores the first response for a claimed key.
    CompleteIdempotency {
        api_key_id: String,
        key: String,
        status: u16,
        #[serde(with = "text_bytes")]
        body: Vec<u8>,
    },
}

/// Stored responses are JSON text: journaled as a string, not as an array of numbers. A body
/// that is not UTF-8 fails to serialise (the batch is then written straight to the database).
mod text_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(b).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

/// A new idempotency claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRecord {
    pub api_key_id: String,
    pub key: String,
    /// Canonical hash of the request; a replay must match it.
    pub request_hash: String,
    /// The resource the request creates, so a retry after a crash finds it.
    pub resource_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// The stored first response for an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdemState {
    /// First request still running (or it was, when its process stopped); `since` is unix ms.
    InFlight {
        request_hash: String,
        since: i64,
        resource_id: Option<String>,
        /// Claimed by a process that has since stopped (marked at startup): abandoned.
        orphaned: bool,
    },
    Done {
        request_hash: String,
        status: u16,
        body: Vec<u8>,
    },
}

/// Outcome of claiming an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdemClaim {
    /// The key is ours now.
    Claimed,
    /// Someone used it before.
    Existing(IdemState),
}

/// Refund reservation failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundReserveError {
    NotFound,
    NotCaptured(PaymentStatus),
    /// Requested amount is more than what is left (`remaining`).
    Exceeds {
        remaining: i64,
    },
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O, corruption, a poisoned lock. Maps to HTTP 503.
    #[error("store: {0}")]
    Backend(String),
    /// A [`Write::ClaimIdempotency`] found the key held by a live record (nothing was written).
    #[error("idempotency key already used")]
    KeyTaken(IdemState),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// Result alias.
pub type StoreResult<T> = Result<T, StoreError>;

/// The persistence interface.
pub trait Store: Send + Sync + 'static {
    /// True when every call is short and never waits on the disk (no fsync), so async code
    /// may call it inline instead of paying two thread hand-offs on the blocking pool.
    fn inline_ok(&self) -> bool {
        false
    }

    /// Claims a key on its own (requests whose first write is not a batch of their own; a
    /// payment claims its key in the transaction that records its first attempt).
    fn idem_claim(&self, claim: &IdemRecord) -> StoreResult<IdemClaim> {
        match self.write_batch(vec![Write::ClaimIdempotency(claim.clone())]) {
            Ok(()) => Ok(IdemClaim::Claimed),
            Err(StoreError::KeyTaken(s)) => Ok(IdemClaim::Existing(s)),
            Err(e) => Err(e),
        }
    }
    /// The live record holding a key, if any.
    fn idem_get(&self, api_key_id: &str, key: &str, now_ms: i64) -> StoreResult<Option<IdemState>>;
    /// Stores the first response.
    fn idem_complete(&self, api_key_id: &str, key: &str, status: u16, body: &[u8]) -> StoreResult<()> {
        self.write_batch(vec![Write::CompleteIdempotency {
            api_key_id: api_key_id.into(),
            key: key.into(),
            status,
            body: body.to_vec(),
        }])
    }
    /// Releases a claim whose request stored nothing (e.g. a store error mid-way).
    /// Releases the in-flight claim of `(api_key_id, key)` linked to `resource_id`, and only
    /// that one (compare-and-delete: a claim another request made since stays).
    fn idem_release(&self, api_key_id: &str, key: &str, resource_id: &str) -> StoreResult<()>;
    /// Deletes expired idempotency records; returns how many.
    fn idem_expire(&self, now_ms: i64) -> StoreResult<usize>;

    /// Applies several writes in one transaction (one commit on the hot path instead of many);
    /// all or nothing. Takes the batch by value: a backend may keep it (the SQLite one holds
    /// it in its write-ahead journal until applied) without copying it on the request path.
    fn write_batch(&self, ops: Vec<Write>) -> StoreResult<()>;
    fn insert_payment(&self, p: &PaymentRow) -> StoreResult<()>;
    /// Stores a payment's new state. Returns the status it replaced, or `None` when nothing was
    /// written: no such payment, or a final status that may not be replaced by this one. A
    /// final status is replaced only by itself (other fields change), or in two corrections:
    /// `succeeded` over a failure paymux inferred ([`INFERRED_FAILURE`]), and `canceled` over
    /// `succeeded` (the provider canceled a paid payment, refunding the payer). The refunded
    /// total and the statuses it decides are written by [`Store::update_refund`] alone.
    fn update_payment(&self, p: &PaymentRow) -> StoreResult<Option<PaymentStatus>>;

    fn get_payment(&self, id: &str) -> StoreResult<Option<PaymentRow>>;
    fn payments_due(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<PaymentRow>>;

    fn insert_attempt(&self, a: &AttemptRow) -> StoreResult<()>;
    fn update_attempt(&self, a: &AttemptRow) -> StoreResult<()>;
    /// Sets or clears the watch mark of attempt `attempt_ref` alone (a writer holding an older
    /// copy of the row does not undo it).
    fn set_attempt_watch(&self, attempt_ref: &str, watch: bool) -> StoreResult<()>;
    /// Gives attempt `attempt_ref` `outcome` if it is still `unknown`, touching nothing else.
    fn settle_unknown_attempt(&self, attempt_ref: &str, outcome: &str) -> StoreResult<bool>;
    fn attempts(&self, payment_id: &str) -> StoreResult<Vec<AttemptRow>>;
    fn attempt_by_ref(&self, attempt_ref: &str) -> StoreResult<Option<AttemptRow>>;
    fn attempt_by_provider_ref(&self, channel: &str, provider_ref: &str) -> StoreResult<Option<AttemptRow>>;
    /// Watched attempts in key order, after `after` (payment id, attempt number) when given, so
    /// a caller can page through all of them across passes.
    fn watched_attempts(&self, after: Option<(&str, i64)>, limit: usize) -> StoreResult<Vec<AttemptRow>>;

    /// Atomically checks the refundable remainder and inserts a pending refund of `amount`
    /// (`None`: everything left). Pending and succeeded refunds both count against the limit.
    fn reserve_refund(
        &self,
        payment_id: &str,
        refund_id: &str,
        amount: Option<i64>,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<RefundRow, ReserveFailure>;
    /// Stores a refund's new state if it still has the status `read` (what the writer's copy
    /// says), and in the same transaction settles its payment: the refunded total from the
    /// succeeded refunds, and a captured payment's status from that total (`succeeded`,
    /// `partially_refunded`, `refunded`). Nothing else writes either. Writes nothing when
    /// another writer got there first.
    fn update_refund(&self, r: &RefundRow, read: &str) -> StoreResult<RefundWrite>;
    /// Refunds still `pending` that were last touched before `before_ms`, oldest first.
    fn pending_refunds(&self, before_ms: i64, limit: usize) -> StoreResult<Vec<RefundRow>>;
    fn refunds(&self, payment_id: &str) -> StoreResult<Vec<RefundRow>>;
    fn get_refund(&self, id: &str) -> StoreResult<Option<RefundRow>>;

    /// At startup: payments a crash interrupted. An attempt still `pending` may have reached
    /// its provider, so the payment is pinned to that attempt and queued for a status query;
    /// a payment with no attempt at all certainly reached no provider and is failed.
    /// Returns (queued, failed).
    fn recover_interrupted(&self, now_ms: i64) -> StoreResult<(usize, usize)>;

    /// Moves committed data from the log into the main database (SQLite: a WAL checkpoint).
    /// Called periodically off the request path, never while a request holds the store.
    fn checkpoint(&self) -> StoreResult<()>;
    /// Per channel, how many payments, pending refunds and watched attempts on it are not
    /// settled yet (a channel holding any must not disappear from the policy).
    fn open_work_by_channel(&self) -> StoreResult<Vec<(String, i64)>>;
    /// Records a webhook event id; returns true when it had been seen before (a duplicate).
    fn webhook_seen(&self, channel: &str, event_id: &str, now_ms: i64) -> StoreResult<bool>;
    /// Writes acknowledged but not yet in the database proper (a write-ahead backlog), for
    /// the metrics; 0 for a backend without one.
    fn journal_backlog(&self) -> usize {
        0
    }
}

/// Why a refund could not be reserved.
#[derive(Debug)]
pub enum ReserveFailure {
    Rule(RefundReserveError),
    Store(StoreError),
}

/// Runs a store call: inline when the backend says its calls never wait on the disk, else on
/// the blocking pool so an fsync never stalls an async worker.
pub async fn call<T, F>(store: &Arc<dyn Store>, f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> StoreResult<T> + Send + 'static,
{
    if store.inline_ok() {
        return f(store.as_ref());
    }
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(s.as_ref()))
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
