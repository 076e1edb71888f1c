//! Status sync, cancel and refund of an existing payment, always on its holding channel.

use super::*;
use crate::connector::{
    CancelOutcome, ProviderPayment, QueryOutcome, QueryRef, RefundOutcome, RefundRequest, RefundState,
};
use crate::store::{now_ms, RefundReserveError, RefundRow, ReserveFailure};
use serde_json::json;

impl Engine {
    /// Reads a payment; when it is not final, asks its channel first and stores the answer.
    pub async fn get(&self, ctx: &Ctx, policy: &Policy, id: &str) -> Result<PaymentView, EngineError> {
        let mut v = self.view(id).await?;
        if !v.payment.status.is_final() {
            if let Some(QueryOutcome::Found(found)) = self.query_state(ctx, policy, &v.payment).await {
                // Re-read: a webhook or refund may have changed the row during the query.
                v = self.view(id).await?;
                if self.adopt_found(ctx, &mut v.payment, &found).await? {
                    v = self.view(id).await?;
                }
            }
        }
        Ok(v)
    }

    /// Asks the holding channel about a payment; `None` when it has no holding channel or
    /// attempt to ask about.
    pub(crate) async fn query_state(&self, ctx: &Ctx, pol: &Policy, p: &PaymentRow) -> Option<QueryOutcome> {
        let ch = holding_channel(pol, p)?;
        let aref = p.attempt_ref.clone()?;
        let pref = p.provider_ref.clone().filter(|s| !s.is_empty());
        Some(self.query_ref(ctx, &ch, p, &aref, pref).await)
    }

    /// Asks `ch` about the attempt `aref` of payment `p` (and the provider's id when known),
    /// timed from the attempt's stored start.
    pub(crate) async fn query_ref(
        &self,
        ctx: &Ctx,
        ch: &Arc<Channel>,
        p: &PaymentRow,
        aref: &str,
        pref: Option<String>,
    ) -> QueryOutcome {
        let since = self.since_send(aref).await;
        self.ask(ctx, ch, p, aref, pref, since).await
    }

    /// The one status query: built, signed, sent and read by the channel's connector. A query
    /// that cannot be built or sent is `Unknown`, with why; so is an answer about another
    /// amount than payment `p`'s (the provider found something else under our reference: it
    /// is neither adopted nor taken as "no such payment").
    pub(crate) async fn ask(
        &self,
        ctx: &Ctx,
        ch: &Arc<Channel>,
        p: &PaymentRow,
        aref: &str,
        pref: Option<String>,
        since_send_ms: u64,
    ) -> QueryOutcome {
        let (a2, p2) = (aref.to_string(), pref.clone());
        let built = self
            .build(ch, move |c| {
                c.build_query(&QueryRef { attempt_ref: &a2, provider_ref: p2.as_deref(), since_send_ms })
            })
            .await;
        let req = match built {
            Ok(r) => r,
            Err(e) => return QueryOutcome::Unknown { code: e.code.to_string() },
        };
        let (res, _) = self.send(ch, &req, Some(ctx.remaining())).await;
        let q = QueryRef { attempt_ref: aref, provider_ref: pref.as_deref(), since_send_ms };
        let out = match res {
            Ok(resp) => ch.connector.parse_query(&q, &req, &resp),
            Err(e) => QueryOutcome::Unknown { code: e.code().into() },
        };
        match out {
            QueryOutcome::Found(found) if !p.is_for(found.money) => {
                tracing::warn!(channel = %ch.id, payment_id = %p.id, "the status query found another amount under the payment's reference; not adopted");
                QueryOutcome::Unknown { code: "another_amount".into() }
            }
            out => out,
        }
    }

    /// Cancels a payment that has not completed.
    pub async fn cancel(&self, ctx: &Ctx, policy: &Policy, id: &str) -> Result<PaymentView, EngineError> {
        let mut v = self.view(id).await?;
        if v.payment.status.is_final() {
            return Err(EngineError::NotCancelable(v.payment.status));
        }
        let ch = holding_channel(policy, &v.payment).ok_or_else(|| {
            EngineError::ProviderUnavailable("the holding channel is not in the current policy".into())
        })?;
        if v.payment.provider_ref.is_none() {
            // The create's answer was lost: learn what the provider holds under our reference
            // before asking it to cancel (never send a request naming no payment).
            let found = match self.query_state(ctx, policy, &v.payment).await {
                Some(QueryOutcome::Found(f)) if !f.provider_ref.is_empty() => f,
                _ => return Err(EngineError::OutcomeUnknown),
            };
            // Re-read: a callback may have settled the payment during the query.
            v = self.view(id).await?;
            let p = &mut v.payment;
            self.adopt_found(ctx, p, &found).await?;
            if p.status.is_final() {
                return Err(EngineError::NotCancelable(p.status));
            }
        }
        let p = &mut v.payment;
        let aref = p.attempt_ref.clone().unwrap_or_default();
        let pref = p.provider_ref.clone().unwrap_or_default();
        // Watched until the cancel's outcome is known (a crash, a lost answer): a payment the
        // payer completes meanwhile may still be canceled at the provider (Antom cancels paid
        // wallet payments, refunding the payer); the reconciler then takes that.
        self.watch_holding_attempt(&aref, true).await?;
        let a2 = aref.clone();
        let req = self
            .build(&ch, move |c| c.build_cancel(&a2, &pref))
            .await
            .map_err(|e| EngineError::ProviderUnavailable(e.to_string()))?;
        let (res, _) = self.send(&ch, &req, Some(ctx.remaining())).await;
        let out = match res {
            Ok(resp) => ch.connector.parse_cancel(&req, &resp),
            Err(e) => CancelOutcome::Unknown { code: e.code().into() },
        };
        self.audit(
            ctx,
            "payment.cancel",
            Some(id),
            &format!("{out:?}").split(' ').next().unwrap_or("").to_lowercase(),
            json!({"channel": ch.id}),
        )
        .await;
        // A definite answer needs no watch.
        if !matches!(out, CancelOutcome::Unknown { .. }) {
            self.watch_holding_attempt(&aref, false).await?;
        }
        let unsettled = match out {
            CancelOutcome::Canceled => {
                apply_state(p, &ProviderState::Canceled, now_ms());
                if self.save_payment(p, None).await? {
                    return Ok(v);
                }
                // Refused: the payment reached another end meanwhile (a failure the reconciler
                // inferred); what is stored answers.
                let stored = self.view(id).await?;
                return match stored.payment.status {
                    PaymentStatus::Canceled => Ok(stored),
                    s => Err(EngineError::NotCancelable(s)),
                };
            }
            CancelOutcome::Refused { code, message } => EngineError::ProviderRefused { code, message },
            CancelOutcome::Unknown { code } => EngineError::ProviderUnavailable(code),
        };
        // Refused, or no answer: the provider's view wins. It may have completed meanwhile
        // (or the cancel may have reached it), and then the answer is the one a second
        // cancel would get (the payer has paid: the app must not read it as "still open").
        // Re-read first: while the cancel was out, a callback may have settled the payment
        // and the app refunded it, so the copy read before is stale.
        v = self.view(id).await?;
        let p = &mut v.payment;
        if !p.status.is_final() {
            self.adopt_provider_view(ctx, policy, p).await?;
        } else if matches!(unsettled, EngineError::ProviderUnavailable(_)) {
            // Completed meanwhile, and the cancel's answer lost: a provider that cancels paid
            // payments may have canceled it all the same. Asked now, as the reconciler goes on
            // asking while the holding attempt stays watched; what is stored then answers.
            self.settle_cancel_in_doubt(ctx, policy, &ch, p, now_ms()).await;
            v = self.view(id).await?;
        }
        match v.payment.status {
            // Closed at the provider already (expired, canceled before, or by this cancel).
            PaymentStatus::Canceled => Ok(v),
            s if s.is_final() => Err(EngineError::NotCancelable(s)),
            _ => Err(unsettled),
        }
    }

    /// Asks the payment's channel what it holds and adopts that (stored when it changed);
    /// nothing changes when the channel gives no answer.
    async fn adopt_provider_view(&self, ctx: &Ctx, policy: &Policy, p: &mut PaymentRow) -> Result<(), EngineError> {
        if let Some(QueryOutcome::Found(found)) = self.query_state(ctx, policy, p).await {
            self.adopt_found(ctx, p, &found).await?;
        }
        Ok(())
    }

    /// Adopts what the provider says it holds; stores and audits the payment when that
    /// changed it (a status learnt on the way, by a read or a cancel, is on the audit trail
    /// like one a callback or the reconciler brings). Whether it was stored.
    async fn adopt_found(&self, ctx: &Ctx, p: &mut PaymentRow, found: &ProviderPayment) -> Result<bool, EngineError> {
        if !adopt(p, found, now_ms()) || !self.save_payment(p, Some("accepted_after_query")).await? {
            return Ok(false);
        }
        self.audit(ctx, "payment.sync", Some(&p.id), p.status.as_str(), json!({"channel": p.channel})).await;
        Ok(true)
    }

    /// Refunds part or all of a captured payment on its original channel.
    pub async fn refund(
        &self,
        ctx: &Ctx,
        policy: &Policy,
        id: &str,
        refund_id: &str,
        amount: Option<i64>,
        reason: Option<String>,
    ) -> Result<RefundRow, EngineError> {
        let v = self.view(id).await?;
        let p = v.payment;
        if !p.status.is_captured() {
            return Err(EngineError::NotRefundable(p.status));
        }
        let ch = holding_channel(policy, &p).ok_or_else(|| {
            EngineError::ProviderUnavailable("the holding channel is not in the current policy".into())
        })?;
        let refund_id = refund_id.to_string();
        // In flight from before its reservation is visible to the reconciler.
        let _in_flight = self.refunds_in_flight.enter(&refund_id);
        let (pid, rid, rsn) = (id.to_string(), refund_id.clone(), reason.clone());
        let reserved = tokio::task::spawn_blocking({
            let store = self.store.clone();
            move || store.reserve_refund(&pid, &rid, amount, rsn.as_deref(), now_ms())
        })
        .await
        .map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut r = match reserved {
            Ok(r) => r,
            Err(ReserveFailure::Store(e)) => return Err(e.into()),
            Err(ReserveFailure::Rule(RefundReserveError::NotFound)) => return Err(EngineError::NotFound),
            Err(ReserveFailure::Rule(RefundReserveError::NotCaptured(s))) => return Err(EngineError::NotRefundable(s)),
            Err(ReserveFailure::Rule(RefundReserveError::Exceeds { remaining })) => {
                return Err(EngineError::RefundExceeds { remaining })
            }
        };
        let out = self.send_refund(&ch, &p, &r, ctx).await;
        r.updated_at = now_ms();
        let result = match &out {
            RefundOutcome::Accepted { provider_refund_ref, state } => {
                r.provider_refund_ref = provider_refund_ref.clone();
                apply_refund_state(&mut r, state);
                Ok(())
            }
            // Not the provider's own word (a bare HTTP status, a clash under our reference):
            // it may have refunded all the same, so the refund stays pending and reserved
            // until the provider's callback or the reconciler's query settles it.
            RefundOutcome::NotProcessed { code, .. } if refusal_in_doubt(code) => {
                r.error_code = Some(code.clone());
                Ok(())
            }
            RefundOutcome::NotProcessed { code, message } => {
                r.status = "failed".into();
                r.error_code = Some(code.clone());
                if transient_refusal(code) {
                    // Nothing reached the provider, or it asked to be called again later: a
                    // transient failure, not an answer.
                    Err(EngineError::ProviderUnavailable(format!("{code}: {message}")))
                } else {
                    Err(EngineError::ProviderRefused { code: code.clone(), message: message.clone() })
                }
            }
            // Stays pending and reserved: the provider's callback settles it.
            RefundOutcome::Ambiguous { code } => {
                r.error_code = Some(code.clone());
                Ok(())
            }
        };
        let row = r.clone();
        // Against its reservation: a callback that settled it meanwhile wins.
        let w = crate::store::call(&self.store, move |s| s.update_refund(&row, "pending")).await?;
        self.count_settled(w);
        // A callback may have settled it while the call was out: answer with what is stored.
        let rid = r.id.clone();
        if let Some(stored) = crate::store::call(&self.store, move |s| s.get_refund(&rid)).await? {
            r = stored;
        }
        self.audit(
            ctx,
            "refund.create",
            Some(id),
            &r.status,
            json!({"refund_id": r.id, "amount": r.amount, "channel": ch.id, "error_code": r.error_code}),
        )
        .await;
        // The refusal answers only if it is what was stored: a callback that settled the
        // refund first (the provider made it after all) is the answer.
        match result {
            Err(e) if r.status == "failed" => Err(e),
            _ => Ok(r),
        }
    }

    /// Builds and sends refund `r` of payment `p` to `ch`, under the refund's own id as the
    /// provider's idempotency reference (so sending it again cannot refund twice).
    pub(crate) async fn send_refund(
        &self,
        ch: &Arc<Channel>,
        p: &PaymentRow,
        r: &RefundRow,
        ctx: &Ctx,
    ) -> RefundOutcome {
        let money = match Money::new(r.amount, p.currency) {
            Ok(m) => m,
            Err(e) => return RefundOutcome::NotProcessed { code: "invalid_amount".into(), message: e.to_string() },
        };
        let spec = RefundSpec {
            refund_id: r.id.clone(),
            payment_id: p.id.clone(),
            provider_ref: p.provider_ref.clone().unwrap_or_default(),
            money,
            reason: r.reason.clone(),
        };
        self.send_refund_of(ch, spec, ctx).await
    }

    /// Builds and sends a refund to `ch` (a refund the app asked for, or the reversal of a
    /// payment charged twice).
    pub(crate) async fn send_refund_of(&self, ch: &Arc<Channel>, spec: RefundSpec, ctx: &Ctx) -> RefundOutcome {
        let notify = ch.notify_url.clone();
        let built = self
            .build(ch, move |c| {
                c.build_refund(&RefundRequest {
                    refund_id: &spec.refund_id,
                    payment_id: &spec.payment_id,
                    provider_ref: &spec.provider_ref,
                    amount: spec.money,
                    reason: spec.reason.as_deref(),
                    notify_url: &notify,
                })
            })
            .await;
        let req = match built {
            Ok(req) => req,
            Err(e) => return RefundOutcome::NotProcessed { code: e.code.into(), message: e.message },
        };
        match self.send(ch, &req, Some(ctx.remaining())).await.0 {
            Ok(resp) => ch.connector.parse_refund(&req, &resp),
            Err(e @ crate::connector::transport::SendError::NotSent(_)) => {
                // The transport's words (addresses, library internals) stay in the log.
                tracing::warn!(channel = %ch.id, error = ?e, "refund not sent");
                RefundOutcome::NotProcessed {
                    code: e.code().into(),
                    message: "the provider could not be reached; nothing was sent".into(),
                }
            }
            Err(e) => RefundOutcome::Ambiguous { code: e.code().into() },
        }
    }

    /// Marks the attempt `attempt_ref` watched, or not (see [`Engine::cancel`]).
    async fn watch_holding_attempt(&self, attempt_ref: &str, watch: bool) -> Result<(), EngineError> {
        let aref = attempt_ref.to_string();
        crate::store::call(&self.store, move |s| s.set_attempt_watch(&aref, watch)).await?;
        Ok(())
    }

    /// Counts the status a refund write's settlement moved its payment to.
    pub(crate) fn count_settled(&self, w: crate::store::RefundWrite) {
        if let Some((p, before)) = w.settled {
            self.count_status(&p, Some(before));
        }
    }

    /// Reads a refund.
    pub async fn get_refund(&self, id: &str) -> Result<RefundRow, EngineError> {
        let id = id.to_string();
        crate::store::call(&self.store, move |s| s.get_refund(&id)).await?.ok_or(EngineError::RefundNotFound)
    }
}

/// Whether the refusal of a refund sent again is the provider's settled word on it, so its
/// amount may be released: not a transport or local failure, a rate limit, a bare HTTP status
/// or a clash with the first request under the same reference (which may still be at work
/// and land later).
pub(crate) fn refusal_settles(code: &str) -> bool {
    !transient_refusal(code) && code != "signing_failed" && !refusal_in_doubt(code)
}

/// Whether a refusal is not the provider's own word on the refund, so that it may have been
/// carried out all the same: a bare HTTP status (a gateway's, or one after the work was
/// done), an unknown result, or a clash with an earlier request under the same reference.
fn refusal_in_doubt(code: &str) -> bool {
    matches!(code, "unknown" | "REPEAT_REQ_INCONSISTENT") || code.starts_with("http_")
}

/// Whether a refund was not processed for a passing reason: nothing reached the provider
/// (the transport's `connect_failed`), or it asked to be called again later (`rate_limited`).
fn transient_refusal(code: &str) -> bool {
    matches!(code, "connect_failed" | "rate_limited")
}

/// A refund to send, owned (signing may run on the blocking pool).
pub(crate) struct RefundSpec {
    pub refund_id: String,
    pub payment_id: String,
    pub provider_ref: String,
    pub money: Money,
    pub reason: Option<String>,
}

/// Puts the provider's word on a refund: its status, and the error code that goes with it
/// (none once it succeeded, whatever was met on the way; the provider's when it failed).
pub(crate) fn apply_refund_state(r: &mut RefundRow, state: &RefundState) {
    r.status = refund_status(state).into();
    match state {
        RefundState::Succeeded => r.error_code = None,
        RefundState::Failed { code, .. } => r.error_code = Some(code.clone()),
        RefundState::Pending => {}
    }
}

/// Stored refund status for a provider refund state.
pub fn refund_status(s: &RefundState) -> &'static str {
    match s {
        RefundState::Pending => "pending",
        RefundState::Succeeded => "succeeded",
        RefundState::Failed { .. } => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::refusal_settles;

    #[test]
    fn only_the_providers_own_refusal_settles_a_resent_refund() {
        for settled in ["charge_already_refunded", "amount_too_large", "REFUND_AMOUNT_EXCEED"] {
            assert!(refusal_settles(settled), "{settled}");
        }
        let in_doubt =
            ["connect_failed", "rate_limited", "signing_failed", "unknown", "REPEAT_REQ_INCONSISTENT", "http_429"];
        for code in in_doubt {
            assert!(!refusal_settles(code), "{code}");
        }
    }
}
