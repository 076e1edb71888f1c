//! Provider callbacks: verified by the channel's connector, deduplicated, applied.

use super::*;
use crate::connector::{WebhookError, WebhookKind};
use crate::store::{now_ms, RefundRow};
use serde_json::json;

/// Result of handling a callback, for the HTTP answer.
#[derive(Debug)]
pub enum WebhookResult {
    /// Verified (and applied, or a duplicate): answer with the provider's ack.
    Ack { duplicate: bool },
    /// Verified, but about an attempt still in flight: not recorded, so the provider's
    /// redelivery is applied once the attempt has settled.
    Retry,
    /// Refused: answer 401, change nothing.
    Rejected(WebhookError),
}

impl Engine {
    /// Verifies and applies a callback for `ch`.
    pub async fn webhook(
        &self,
        ctx: &Ctx,
        ch: &Arc<Channel>,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<WebhookResult, EngineError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let ev = match ch.connector.verify_webhook(&ch.notify_path, headers, body, now) {
            Ok(ev) => ev,
            Err(e) => {
                // The SRE's to see (a wrong webhook secret, a clock off), bounded: anyone can
                // post forged callbacks.
                static LOG: crate::log_limit::Once = crate::log_limit::Once::new();
                if LOG.now() {
                    tracing::warn!(channel = %ch.id, reason = %e, "a callback was refused (paymux_webhooks_total with outcome rejected counts them all)");
                }
                self.metrics.webhooks.with_label_values(&[&ch.id, "rejected"]).inc();
                self.audit(ctx, "webhook", None, "rejected", json!({"channel": ch.id, "reason": e.to_string()})).await;
                return Ok(WebhookResult::Rejected(e));
            }
        };
        // A payment event is matched to its attempt before its id is recorded: one about an
        // attempt still in flight is not recorded (and answered "retry"), so the provider's
        // redelivery is applied once the engine has stored the attempt's own answer.
        let target = match &ev.kind {
            WebhookKind::Payment { provider_ref, attempt_ref, money, .. } => {
                let (c, pr, ar, money) = (ch.id.clone(), provider_ref.clone(), attempt_ref.clone(), *money);
                crate::store::call(&self.store, move |s| {
                    let a = match ar {
                        // Found by our reference (metadata): when the attempt already knows the
                        // provider's object, the event must be about that one. Anything else on
                        // the provider account may carry our reference; it is not applied. Nor
                        // is an event about an attempt on another channel (another merchant
                        // account of the same provider).
                        Some(a) => s
                            .attempt_by_ref(&a)?
                            .filter(|a| a.channel == c && a.provider_ref.as_deref().is_none_or(|r| r == pr)),
                        None => s.attempt_by_provider_ref(&c, &pr)?,
                    };
                    // And it must be about the payment's amount.
                    let p = match &a {
                        Some(a) => s.get_payment(&a.payment_id)?.filter(|p| p.is_for(money)),
                        None => None,
                    };
                    Ok(a.zip(p))
                })
                .await?
            }
            _ => None,
        };
        if let Some((a, p)) = &target {
            // In flight: the attempt awaits its answer, or the payment is still being created
            // (not final, on no channel yet). A payment that failed on every channel has no
            // holding attempt either, but its events are acknowledged and applied as stale.
            if a.outcome == "pending" || (p.attempt_ref.is_none() && !p.status.is_final()) {
                self.metrics.webhooks.with_label_values(&[&ch.id, "deferred"]).inc();
                self.audit(ctx, "webhook", Some(&p.id), "deferred", json!({"channel": ch.id, "event_id": ev.event_id}))
                    .await;
                return Ok(WebhookResult::Retry);
            }
        }
        // An event about no payment of ours is acknowledged (as unmatched, below) but its id
        // not kept: a forged or mistaken one must not take the id of the genuine event that
        // may follow.
        let stray = matches!(ev.kind, WebhookKind::Payment { .. }) && target.is_none();
        let (c, e) = (ch.id.clone(), ev.event_id.clone());
        let duplicate = !stray && crate::store::call(&self.store, move |s| s.webhook_seen(&c, &e, now_ms())).await?;
        if duplicate {
            self.metrics.webhooks.with_label_values(&[&ch.id, "duplicate"]).inc();
            let pid = target.as_ref().map(|(_, p)| p.id.as_str());
            self.audit(ctx, "webhook", pid, "duplicate", json!({"channel": ch.id, "event_id": ev.event_id})).await;
            return Ok(WebhookResult::Ack { duplicate: true });
        }
        let mut payment_id = None;
        // What the callback left behind, for the audit trail: the payment's status, or the
        // refund's and its status.
        let mut details = json!({"channel": ch.id, "event_id": ev.event_id});
        let outcome = match &ev.kind {
            WebhookKind::Payment { provider_ref, state, .. } => match target {
                Some((a, p)) => {
                    payment_id = Some(p.id.clone());
                    let (outcome, status) = self.apply_payment_event(ch, a, p, provider_ref, state).await?;
                    details["payment_status"] = json!(status.as_str());
                    outcome
                }
                None => "unmatched",
            },
            WebhookKind::Refund { refund_id, state, provider_refund_ref } => match refund_id {
                Some(rid) => match self.apply_refund_event(&ch.id, rid, state, provider_refund_ref).await? {
                    Some((r, changed)) => {
                        details["refund_id"] = json!(r.id);
                        details["refund_status"] = json!(r.status);
                        payment_id = Some(r.payment_id);
                        if changed {
                            "applied"
                        } else {
                            "unchanged"
                        }
                    }
                    None => "unmatched",
                },
                None => "unmatched",
            },
            WebhookKind::Ignored { .. } => "ignored",
        };
        self.metrics.webhooks.with_label_values(&[&ch.id, outcome]).inc();
        self.audit(ctx, "webhook", payment_id.as_deref(), outcome, details).await;
        Ok(WebhookResult::Ack { duplicate: false })
    }

    async fn apply_payment_event(
        &self,
        ch: &Arc<Channel>,
        a: AttemptRow,
        mut p: PaymentRow,
        provider_ref: &str,
        state: &ProviderState,
    ) -> Result<(&'static str, PaymentStatus), EngineError> {
        if p.attempt_ref.as_deref() != Some(a.attempt_ref.as_str()) {
            // The event is about an attempt paymux moved on from. If it completed, the payer
            // would be charged twice: the reconciler reverses watched attempts (once: an
            // attempt already reversed is not queued again by a late or repeated callback).
            let reversed = a.outcome == super::reconcile::REVERSED;
            if !reversed
                && matches!(state, ProviderState::Succeeded | ProviderState::Processing | ProviderState::RequiresAction)
            {
                let mut a = a;
                a.watch = true;
                a.provider_ref = Some(provider_ref.to_string());
                crate::store::call(&self.store, move |s| s.update_attempt(&a)).await?;
                tracing::warn!(channel = %ch.id, payment_id = %p.id, "callback for an attempt that is not the holding one; queued for reversal check");
                return Ok(("orphan", p.status));
            }
            return Ok(("stale", p.status));
        }
        if p.provider_ref.is_none() {
            p.provider_ref = Some(provider_ref.to_string());
        }
        if !apply_state(&mut p, state, now_ms()) {
            return Ok(("unchanged", p.status));
        }
        if self.save_payment(&p, Some("accepted")).await? {
            return Ok(("applied", p.status));
        }
        // Refused: another writer got there first, and what it stored stands.
        let pid = p.id.clone();
        let stored = crate::store::call(&self.store, move |s| s.get_payment(&pid)).await?;
        Ok(("unchanged", stored.map_or(p.status, |s| s.status)))
    }

    /// Applies a refund callback received on `channel`; returns the refund as it stands and
    /// whether it changed, or `None` for a refund unknown on that channel. Pending
    /// settles either way; a refund the provider reports failed after all (Stripe's
    /// refund.failed) is reversed; a failure paymux inferred (the provider showed no such
    /// refund) yields to the provider saying it succeeded. Written against the status it
    /// read, re-read once if another writer got there first.
    async fn apply_refund_event(
        &self,
        channel: &str,
        rid: &str,
        state: &crate::connector::RefundState,
        provider_refund_ref: &Option<String>,
    ) -> Result<Option<(RefundRow, bool)>, EngineError> {
        for _ in 0..2 {
            let Ok(mut r) = self.get_refund(rid).await else { return Ok(None) };
            let pid = r.payment_id.clone();
            let p = crate::store::call(&self.store, move |s| s.get_payment(&pid)).await?;
            if p.and_then(|p| p.channel).as_deref() != Some(channel) {
                return Ok(None);
            }
            let new_status = super::ops::refund_status(state);
            let inferred = r.status == "failed" && r.error_code.as_deref() == Some(super::INFERRED_FAILURE);
            let applies = r.status == "pending"
                || (r.status == "succeeded" && new_status == "failed")
                || (inferred && new_status == "succeeded");
            if !applies {
                return Ok(Some((r, false)));
            }
            let read = r.status.clone();
            super::ops::apply_refund_state(&mut r, state);
            r.provider_refund_ref = r.provider_refund_ref.or(provider_refund_ref.clone());
            r.updated_at = now_ms();
            let row = r.clone();
            let w = crate::store::call(&self.store, move |s| s.update_refund(&row, &read)).await?;
            if w.written {
                self.count_settled(w);
                return Ok(Some((r, true)));
            }
        }
        Err(EngineError::Store(crate::store::StoreError::Backend(format!(
            "refund {rid} kept changing while a callback was applied"
        ))))
    }
}
