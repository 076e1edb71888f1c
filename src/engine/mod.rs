//! The payment engine: drives provider calls for create, status, cancel and refund, applies
//! callbacks, and reconciles unknown outcomes in the background.
//!
//! Architecture invariant: failover happens only here ([`attempts`]), and only when the
//! previous channel certainly did not process the payment: a transport error before any byte
//! was sent, an answer the connector classifies as not processed, or, after an ambiguous
//! send, a status query that says the provider has no such payment. Anything else leaves the
//! payment on its channel (`processing`) for the reconciler.

pub mod attempts;
pub mod ops;
pub mod reconcile;
pub mod webhook;

use crate::audit::{AuditLog, Event};
use crate::connector::{ProviderState, WireRequest, WireResponse};
use crate::domain::{Method, Money, PaymentStatus};
use crate::metrics::Metrics;
use crate::policy::{Channel, Policy};
use crate::store::{AttemptRow, PaymentRow, Store, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared services the engine uses.
#[derive(Clone)]
pub struct Engine {
    pub store: Arc<dyn Store>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    /// The reconciler's per-item backoff for watched attempts and pending refunds.
    pub retry: Arc<reconcile::RetrySchedule>,
    /// Refunds whose own request is still waiting for the provider: the reconciler leaves
    /// them alone (the provider may not know them yet, and their caller will store the answer).
    pub refunds_in_flight: Arc<InFlight>,
    /// Results of creates the store refused to take (a full disk): written again by each
    /// reconciler pass until it does.
    pub unstored: Arc<Unstored>,
}

/// The final writes of creates that went out to a provider but whose result the store
/// refused: until written, the store shows the payment in flight on no channel, which no
/// read, callback or reconciler pass can settle (only a restart's recovery would). Each is
/// the batch the create would have committed (the payment's row among its writes).
#[derive(Default)]
pub struct Unstored(std::sync::Mutex<Vec<Vec<crate::store::Write>>>);

impl Unstored {
    pub(crate) fn push(&self, ops: Vec<crate::store::Write>) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(ops);
    }

    fn take(&self) -> Vec<Vec<crate::store::Write>> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Ids of operations under way in this process.
#[derive(Default)]
pub struct InFlight(std::sync::Mutex<std::collections::HashSet<String>>);

impl InFlight {
    /// Marks `id` under way until the returned guard drops.
    pub fn enter(self: &Arc<Self>, id: &str) -> InFlightGuard {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string());
        InFlightGuard { set: self.clone(), id: id.to_string() }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(id)
    }
}

/// Ends an [`InFlight`] entry when dropped (also when its future is cancelled).
pub struct InFlightGuard {
    set: Arc<InFlight>,
    id: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// Who is calling and under which request id.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub request_id: String,
    pub actor: String,
    pub deadline: Instant,
}

impl Ctx {
    /// The same call with its deadline counted from now: once the request body is in, so
    /// that the deadline bounds the work with providers, not the app's upload (which has
    /// its own read timeout).
    pub fn from_now(&self, budget: Duration) -> Ctx {
        Ctx { deadline: Instant::now() + budget, ..self.clone() }
    }

    /// Time left before the request deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// The customer as the app sent it (stored as JSON; `email`/`phone` are the merchant's data).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Customer {
    pub id: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub country: Option<String>,
    pub ip: Option<String>,
}

/// A validated create request.
#[derive(Clone, Debug)]
pub struct NewPayment {
    pub money: Money,
    pub method: Method,
    pub order_id: String,
    pub customer: Option<Customer>,
    /// Method-specific data (PSP token, wallet token). Passed to the connector, never stored
    /// or logged.
    pub payment_method_data: Option<serde_json::Value>,
    pub return_url: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A payment with its attempts, as the API shows it.
#[derive(Clone, Debug)]
pub struct PaymentView {
    pub payment: PaymentRow,
    pub attempts: Vec<AttemptRow>,
}

/// Engine failures, mapped to problem+json by the API layer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("payment not found")]
    NotFound,
    #[error("refund not found")]
    RefundNotFound,
    #[error("payment is {0:?} and cannot be canceled")]
    NotCancelable(PaymentStatus),
    #[error("payment is {0:?}; only captured payments can be refunded")]
    NotRefundable(PaymentStatus),
    #[error("refund amount exceeds the {remaining} minor units left to refund")]
    RefundExceeds { remaining: i64 },
    #[error("the provider has not confirmed whether it holds this payment yet")]
    OutcomeUnknown,
    #[error("the provider refused: {code}: {message}")]
    ProviderRefused { code: String, message: String },
    #[error("the provider could not be reached or gave no usable answer ({0})")]
    ProviderUnavailable(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Maps a provider state to a payment status.
pub fn status_of(state: &ProviderState) -> PaymentStatus {
    match state {
        ProviderState::RequiresAction => PaymentStatus::RequiresAction,
        ProviderState::Processing => PaymentStatus::Processing,
        ProviderState::Succeeded => PaymentStatus::Succeeded,
        ProviderState::Failed { .. } => PaymentStatus::Failed,
        ProviderState::Canceled => PaymentStatus::Canceled,
    }
}

/// Takes in what a status query found: the provider's id when the payment had none yet, and
/// its state. Returns true when the row changed.
pub fn adopt(p: &mut PaymentRow, found: &crate::connector::ProviderPayment, now: i64) -> bool {
    let learned_ref = p.provider_ref.is_none() && !found.provider_ref.is_empty();
    if learned_ref {
        p.provider_ref = Some(found.provider_ref.clone());
    }
    apply_state(p, &found.state, now) || learned_ref
}

pub use crate::store::INFERRED_FAILURE;

/// The error-code prefix of a payment whose provider said it took it without naming it
/// (`CreateOutcome::Unnamed`) and whose status query has not found it yet: never inferred
/// failed for its absence.
pub(crate) const TAKEN_UNNAMED: &str = "taken_unnamed_";

/// Whether `p` failed only by paymux's inference.
pub fn inferred_failure(p: &PaymentRow) -> bool {
    p.status == PaymentStatus::Failed && p.error_code.as_deref() == Some(INFERRED_FAILURE)
}

/// Applies a provider state to a stored payment; final statuses never move backwards.
pub fn apply_state(p: &mut PaymentRow, state: &ProviderState, now: i64) -> bool {
    // One exception to "final never changes": a failure paymux inferred (the provider showed
    // no such payment) yields to the provider later saying it succeeded.
    if p.status.is_final() && !(inferred_failure(p) && *state == ProviderState::Succeeded) {
        return false;
    }
    let new = status_of(state);
    if let ProviderState::Failed { code, message } = state {
        p.error_code = Some(code.clone());
        p.error_message = Some(message.clone());
    }
    if new.is_final() {
        p.reconcile_at = None;
        if new != PaymentStatus::RequiresAction {
            p.next_action = None;
        }
    }
    let changed = new != p.status;
    p.status = new;
    p.updated_at = now;
    changed
}

impl Engine {
    /// Builds a wire request, on the blocking pool when the connector signs with RSA.
    pub(crate) async fn build<F>(&self, ch: &Arc<Channel>, f: F) -> Result<WireRequest, crate::connector::BuildError>
    where
        F: FnOnce(&dyn crate::connector::Connector) -> Result<WireRequest, crate::connector::BuildError>
            + Send
            + 'static,
    {
        if ch.connector.expensive_signing() {
            let c = ch.connector.clone();
            match tokio::task::spawn_blocking(move || f(c.as_ref())).await {
                Ok(r) => r,
                Err(e) => {
                    Err(crate::connector::BuildError { code: "signing_failed", message: e.to_string(), field: None })
                }
            }
        } else {
            f(ch.connector.as_ref())
        }
    }

    /// Sends and times a request, counting latency per channel.
    pub(crate) async fn send(
        &self,
        ch: &Channel,
        req: &WireRequest,
        deadline: Option<Duration>,
    ) -> (Result<WireResponse, crate::connector::transport::SendError>, u64) {
        let t = Instant::now();
        let r = ch.transport.send(req, deadline).await;
        let el = t.elapsed();
        crate::metrics::provider_call(el);
        self.metrics.channel_latency.with_label_values(&[&ch.id]).observe(el.as_secs_f64());
        (r, el.as_millis() as u64)
    }

    /// Milliseconds since the attempt `attempt_ref` was sent (0 when unknown, which keeps a
    /// lagging provider's "not found" non-authoritative).
    pub(crate) async fn since_send(&self, attempt_ref: &str) -> u64 {
        let r = attempt_ref.to_string();
        match crate::store::call(&self.store, move |s| s.attempt_by_ref(&r)).await {
            Ok(Some(a)) => (crate::store::now_ms() - a.started_at).max(0) as u64,
            _ => 0,
        }
    }

    /// Loads a payment with its attempts.
    pub async fn view(&self, id: &str) -> Result<PaymentView, EngineError> {
        let id = id.to_string();
        let (p, a) = crate::store::call(&self.store, move |s| {
            let p = s.get_payment(&id)?;
            let a = match &p {
                Some(p) => s.attempts(&p.id)?,
                None => vec![],
            };
            Ok((p, a))
        })
        .await?;
        p.map(|payment| PaymentView { payment, attempts: a }).ok_or(EngineError::NotFound)
    }

    /// Stores a payment's new state and counts a status change in `paymux_payments_total`.
    /// `answered`: the provider has just told what became of the payment (a status query, a
    /// callback), as this attempt outcome. Returns false when the store kept what it had (a
    /// final status is never replaced by a non-final one); nothing else is then recorded.
    pub(crate) async fn save_payment(
        &self,
        row: &PaymentRow,
        answered: Option<&'static str>,
    ) -> Result<bool, EngineError> {
        let r = row.clone();
        let before = crate::store::call(&self.store, move |s| s.update_payment(&r)).await?;
        if let Some(before) = before {
            self.count_status(row, Some(before));
            if let Some(outcome) = answered {
                self.settle_unknown_attempt(row, outcome).await;
            }
        }
        Ok(before.is_some())
    }

    /// Once the provider has answered for a payment whose holding attempt ended `unknown` (a
    /// lost answer, a crash), that attempt takes the outcome the answer implies, so the
    /// attempts list agrees with the payment's status. Its error code (why it was unknown)
    /// stays.
    async fn settle_unknown_attempt(&self, p: &PaymentRow, outcome: &'static str) {
        let Some(r) = p.attempt_ref.clone() else { return };
        let settled = crate::store::call(&self.store, move |s| s.settle_unknown_attempt(&r, outcome)).await;
        if let Err(e) = settled {
            tracing::warn!(error = %e, payment_id = %p.id, "could not record the settled attempt");
        }
    }

    /// Counts a payment entering its status (`from`: the status it had; `None` for a new payment).
    pub(crate) fn count_status(&self, p: &PaymentRow, from: Option<PaymentStatus>) {
        // A refund that fails after it was accepted takes a payment back to `succeeded`,
        // which it entered once already.
        let back_to_succeeded = p.status == PaymentStatus::Succeeded
            && matches!(from, Some(PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded));
        if from != Some(p.status) && !back_to_succeeded {
            self.metrics
                .payments
                .with_label_values(&[p.method.as_str(), p.channel.as_deref().unwrap_or("none"), p.status.as_str()])
                .inc();
        }
    }

    pub(crate) async fn audit(
        &self,
        ctx: &Ctx,
        action: &'static str,
        payment_id: Option<&str>,
        outcome: &str,
        details: serde_json::Value,
    ) {
        self.audit
            .record(Event {
                request_id: Some(ctx.request_id.clone()),
                actor: ctx.actor.clone(),
                action,
                payment_id: payment_id.map(String::from),
                outcome: outcome.to_string(),
                details,
            })
            .await;
    }
}

/// The channel holding a payment, if the current policy still has it.
pub fn holding_channel(policy: &Policy, p: &PaymentRow) -> Option<Arc<Channel>> {
    p.channel.as_deref().and_then(|c| policy.holding_channel(c)).cloned()
}
