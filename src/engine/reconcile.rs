//! Background reconciliation: payments whose outcome is not final are queried on their
//! holding channel with exponential backoff; attempts paymux moved on from after an ambiguous
//! send are watched, and reversed (cancel or refund) if they turn out to have processed.

use super::*;
use crate::connector::{CancelOutcome, QueryOutcome, RefundOutcome, RefundQuery, RefundQueryOutcome};
use crate::store::{now_ms, RefundRow};
use arc_swap::ArcSwap;
use serde_json::json;

/// How long a moved-on-from attempt is watched before it is considered settled.
const WATCH_WINDOW_MS: i64 = 15 * 60 * 1000;
/// Watched attempts examined per pass.
const WATCH_PAGE: usize = 50;
/// The outcome of an attempt whose charge, made after paymux had moved on, was reversed.
pub(crate) const REVERSED: &str = "reversed";
/// Items (payments, refunds, watched attempts) the reconciler asks providers about at once.
const IN_FLIGHT: usize = 16;
/// Pages of a payment's refunds asked for at most in one refund query (10,000 refunds at
/// Stripe's 100 a page): past that, the refund stays pending rather than be concluded absent.
const MAX_REFUND_PAGES: usize = 100;

/// When the reconciler may next query a watched attempt or a pending refund: exponential
/// backoff per item (the reconciler's initial backoff, doubling, capped at its maximum), so a
/// provider recovering from an outage is not polled on every tick for everything paymux is
/// unsure about. Kept in memory: after a restart every item is queried once, then backs off.
#[derive(Default)]
pub struct RetrySchedule {
    next: std::sync::Mutex<std::collections::HashMap<String, (i64, i64)>>,
    /// When the reconciler first saw each cancel in doubt (in memory: after a restart the
    /// wait starts again, which only makes it longer).
    since: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// Where the next pass continues through the watched attempts (payment id, number).
    watch_cursor: std::sync::Mutex<Option<(String, i64)>>,
}

/// Entries not rescheduled for this long after they fell due belong to items that settled
/// elsewhere (a callback, a request): forgotten.
const FORGET_AFTER_MS: i64 = 60 * 60 * 1000;

impl RetrySchedule {
    /// True when `key` may be queried at `now`.
    pub fn due(&self, key: &str, now: i64) -> bool {
        self.next.lock().map(|m| m.get(key).is_none_or(|(next, _)| *next <= now)).unwrap_or(true)
    }

    /// `key` was queried and is still unsettled: wait twice as long as last time.
    pub fn again(&self, key: &str, now: i64, initial_ms: i64, max_ms: i64) {
        if let Ok(mut m) = self.next.lock() {
            m.retain(|_, (next, _)| *next > now - FORGET_AFTER_MS);
            let backoff = m.get(key).map_or(initial_ms, |(_, b)| (b * 2).min(max_ms)).max(1);
            m.insert(key.to_string(), (now + backoff, backoff));
        }
    }

    /// `key` is settled.
    pub fn done(&self, key: &str) {
        if let Ok(mut m) = self.next.lock() {
            m.remove(key);
        }
        if let Ok(mut m) = self.since.lock() {
            m.remove(key);
        }
    }

    /// When `key` was first seen (now, the first time it is asked).
    pub fn seen_since(&self, key: &str, now: i64) -> i64 {
        self.since.lock().map(|mut m| *m.entry(key.to_string()).or_insert(now)).unwrap_or(now)
    }
}

impl Engine {
    /// Writes again the creates' results the store refused (see [`Unstored`]); those it
    /// refuses again wait for the next pass.
    async fn store_unstored(&self) {
        for ops in self.unstored.take() {
            let Some(p) = ops.iter().find_map(|w| match w {
                crate::store::Write::UpdatePayment(p) => Some(p.clone()),
                _ => None,
            }) else {
                continue;
            };
            let batch = ops.clone();
            match crate::store::call(&self.store, move |s| s.write_batch(batch)).await {
                Ok(()) => {
                    tracing::info!(payment_id = %p.id, status = p.status.as_str(), "stored a create's result the store had refused");
                    self.count_status(&p, None);
                    self.audit
                        .record(crate::audit::Event {
                            actor: "system".into(),
                            action: "payment.stored",
                            payment_id: Some(p.id.clone()),
                            outcome: p.status.as_str().into(),
                            details: json!({"channel": p.channel}),
                            ..Default::default()
                        })
                        .await;
                }
                Err(e) => {
                    tracing::warn!(payment_id = %p.id, error = %e, "the store still refuses a create's result");
                    self.unstored.push(ops);
                }
            }
        }
    }

    /// One reconciliation pass. Returns how many payments were examined.
    pub async fn reconcile_once(&self, policy: &Arc<ArcSwap<Policy>>) -> usize {
        self.store_unstored().await;
        let pol = policy.load_full();
        let now = now_ms();
        let due = crate::store::call(&self.store, move |s| s.payments_due(now, 100)).await.unwrap_or_default();
        let n = due.len();
        side_by_side(due, |p| {
            let (engine, pol) = (self.clone(), pol.clone());
            async move { engine.settle_due(&pol, p).await }
        })
        .await;
        n
    }

    /// Watched attempts and pending refunds: asked about on their own loop, so that payments
    /// waiting on a provider that does not answer hold up neither.
    pub async fn reconcile_others_once(&self, policy: &Arc<ArcSwap<Policy>>) {
        let pol = policy.load_full();
        tokio::join!(self.check_watched(&pol), self.check_refunds(&pol));
    }

    /// Asks a payment's channel about a payment not settled in time and adopts the answer.
    async fn settle_due(&self, pol: &Policy, mut p: PaymentRow) {
        let ctx = Ctx {
            request_id: crate::domain::new_id("rec"),
            actor: "system".into(),
            deadline: Instant::now() + pol.server.request_deadline,
        };
        let channel = p.channel.clone().unwrap_or_default();
        let outcome = self.query_state(&ctx, pol, &p).await;
        // Re-read: a webhook may have settled the payment while the query ran.
        let pid = p.id.clone();
        match crate::store::call(&self.store, move |s| s.get_payment(&pid)).await {
            // A failure paymux only inferred stays under watch for a charge landing late.
            Ok(Some(fresh)) if fresh.status.is_final() && !super::inferred_failure(&fresh) => return,
            Ok(Some(fresh)) => p = fresh,
            _ => return,
        }
        let absent = matches!(outcome, Some(QueryOutcome::NotFound { authoritative: true }))
            && self.absence_trusted(pol, &p).await;
        let (result, changed) = match outcome {
            Some(QueryOutcome::Found(pp)) => ("found", adopt(&mut p, &pp, now_ms())),
            // Not a payment the provider said it took (its query may lag its create), nor one
            // whose create could still be on its way.
            Some(QueryOutcome::NotFound { authoritative: true })
                if absent
                    && p.status == PaymentStatus::Processing
                    && !p.error_code.as_deref().is_some_and(|c| c.starts_with(super::TAKEN_UNNAMED)) =>
            {
                p.status = PaymentStatus::Failed;
                p.error_code = Some(super::INFERRED_FAILURE.into());
                p.error_message = Some("the provider has no record of the payment".into());
                p.reconcile_at = None;
                ("not_found", true)
            }
            _ => ("unknown", false),
        };
        // Queried again later: a payment not settled; and one failed only because its provider
        // showed nothing, for as long as a late charge could still land (the provider's
        // callback for it may be lost), so that it is corrected to succeeded.
        let watch_inferred = super::inferred_failure(&p) && now_ms() - p.created_at < WATCH_WINDOW_MS;
        if !p.status.is_final() || watch_inferred {
            let next = (p.reconcile_backoff_ms.max(1) * 2).min(pol.server.reconcile_max_backoff.as_millis() as i64);
            p.reconcile_backoff_ms = next;
            p.reconcile_at = Some(now_ms() + next);
        } else {
            p.reconcile_at = None;
        }
        p.updated_at = now_ms();
        self.metrics.reconciliations.with_label_values(&[&channel, result]).inc();
        // Audited when it changed something: a payer who never approves would otherwise
        // leave a record per poll for as long as the payment stays open.
        let answered = match result {
            "found" => Some("accepted_after_query"),
            "not_found" => Some("not_found_after_query"),
            _ => None,
        };
        if matches!(self.save_payment(&p, answered).await, Ok(true)) && changed {
            self.audit(
                &ctx,
                "reconcile",
                Some(&p.id),
                p.status.as_str(),
                json!({"channel": channel, "result": result}),
            )
            .await;
        }
    }

    /// Whether a provider's "no such payment" can be believed of `p`: not while the create of
    /// the attempt holding it could still land ([`absence_window`] from the attempt's start):
    /// a timeout or a crash cut paymux's wait short, not the provider's work.
    async fn absence_trusted(&self, pol: &Policy, p: &PaymentRow) -> bool {
        let Some(ch) = holding_channel(pol, p) else { return true };
        let since = match &p.attempt_ref {
            Some(r) => self.since_send(r).await as i64,
            None => now_ms() - p.created_at,
        };
        since >= absence_window(&ch)
    }

    /// Refunds whose answer never came (ambiguous send, lost callback): ask the provider.
    async fn check_refunds(&self, pol: &Arc<Policy>) {
        let before = now_ms() - pol.server.reconcile_initial_backoff.as_millis() as i64;
        // More than a pass takes, so refunds still backing off do not hide the due ones.
        let pending =
            crate::store::call(&self.store, move |s| s.pending_refunds(before, 500)).await.unwrap_or_default();
        let now = now_ms();
        let pending: Vec<_> = pending
            .into_iter()
            .filter(|r| !self.refunds_in_flight.contains(&r.id) && self.retry.due(&r.id, now))
            .take(50)
            .collect();

        let (initial, max) = (
            pol.server.reconcile_initial_backoff.as_millis() as i64,
            pol.server.reconcile_max_backoff.as_millis() as i64,
        );
        side_by_side(pending, |r| {
            let (engine, pol) = (self.clone(), pol.clone());
            async move { engine.check_refund(&pol, r, initial, max).await }
        })
        .await;
    }

    /// Asks a pending refund's channel about it and adopts the answer (or sends it again).
    async fn check_refund(&self, pol: &Policy, mut r: RefundRow, initial: i64, max: i64) {
        let before = (r.status.clone(), r.provider_refund_ref.clone());
        let pid = r.payment_id.clone();
        let Ok(Some(p)) = crate::store::call(&self.store, move |s| s.get_payment(&pid)).await else { return };
        let Some(ch) = holding_channel(pol, &p) else { return };
        // A refund's call is one send, over within the channel's attempt timeout of its
        // reservation; a provider with no record of it well after that never got it.
        let trust_absence_after = absence_window(&ch);
        let (rid, rref, pref) =
            (r.id.clone(), r.provider_refund_ref.clone(), p.provider_ref.clone().unwrap_or_default());
        // A provider that lists a payment's refunds page by page is asked page after page.
        let (mut after, mut pages) = (None::<String>, 0);
        let out = loop {
            let (rid2, rref2, pref2, after2) = (rid.clone(), rref.clone(), pref.clone(), after.clone());
            let Ok(req) = self
                .build(&ch, move |c| {
                    c.build_refund_query(&RefundQuery {
                        refund_id: &rid2,
                        provider_refund_ref: rref2.as_deref(),
                        provider_ref: &pref2,
                        after: after2.as_deref(),
                    })
                })
                .await
            else {
                break None;
            };
            // Each page its own time: pages share no request's deadline.
            let (res, _) = self.send(&ch, &req, Some(pol.server.request_deadline)).await;
            let q = RefundQuery {
                refund_id: &rid,
                provider_refund_ref: rref.as_deref(),
                provider_ref: &pref,
                after: after.as_deref(),
            };
            pages += 1;
            match res.map(|resp| ch.connector.parse_refund_query(&q, &req, &resp)) {
                Ok(RefundQueryOutcome::NextPage { after: next }) if pages < MAX_REFUND_PAGES => after = Some(next),
                Ok(RefundQueryOutcome::NextPage { .. }) => {
                    break Some(RefundQueryOutcome::Unknown { code: "refund_list_too_long".into() })
                }
                Ok(out) => break Some(out),
                Err(e) => break Some(RefundQueryOutcome::Unknown { code: e.code().into() }),
            }
        };
        let Some(out) = out else { return };
        // Counted from here: however long the listing took, a refund sent again gets its time.
        let ctx = Ctx {
            request_id: crate::domain::new_id("rec"),
            actor: "system".into(),
            deadline: Instant::now() + pol.server.request_deadline,
        };
        let result = match out {
            RefundQueryOutcome::Found { provider_refund_ref, state } => {
                r.provider_refund_ref = r.provider_refund_ref.or(provider_refund_ref);
                super::ops::apply_refund_state(&mut r, &state);
                "found"
            }
            // Not yet: a request still on its way (or just timed out) may land.
            RefundQueryOutcome::NotFound if now_ms() - r.created_at < trust_absence_after => "unknown",
            // No record well after the send: send it again under the same reference. The
            // provider answers with the refund if it has it after all (or says it is still
            // at work on it), or makes it now: the refund the app asked for, never a
            // second one. The amount stays reserved until the provider has said which;
            // concluding "never got it" from absence alone released it while a late
            // execution could still land, and a retry then refunded twice.
            RefundQueryOutcome::NotFound => match self.send_refund(&ch, &p, &r, &ctx).await {
                RefundOutcome::Accepted { provider_refund_ref, state } => {
                    r.provider_refund_ref = r.provider_refund_ref.or(provider_refund_ref);
                    super::ops::apply_refund_state(&mut r, &state);
                    "resent"
                }
                RefundOutcome::NotProcessed { code, .. } if super::ops::refusal_settles(&code) => {
                    r.status = "failed".into();
                    r.error_code = Some(code);
                    "resent"
                }
                RefundOutcome::NotProcessed { .. } | RefundOutcome::Ambiguous { .. } => "unknown",
            },
            RefundQueryOutcome::Unknown { .. } | RefundQueryOutcome::NextPage { .. } => "unknown",
        };
        if result == "unknown" || r.status == "pending" {
            self.retry.again(&r.id, now_ms(), initial, max);
        } else {
            self.retry.done(&r.id);
        }
        r.updated_at = now_ms();
        let row = r.clone();
        // Only over the pending refund it queried: a callback that settled it meanwhile wins.
        let written = crate::store::call(&self.store, move |s| s.update_refund(&row, "pending")).await;
        let Ok(w) =
            written.map_err(|e| tracing::warn!(refund_id = %r.id, error = %e, "a refund's state could not be stored"))
        else {
            return;
        };
        if !w.written {
            return;
        }
        self.count_settled(w);
        if result != "unknown" {
            self.metrics.reconciliations.with_label_values(&[ch.id.as_str(), "refund"]).inc();
        }
        // Audited when it changed something, not on every poll of a refund still pending.
        if before != (r.status.clone(), r.provider_refund_ref.clone()) {
            self.audit(
                &ctx,
                "refund.reconcile",
                Some(&r.payment_id),
                &r.status,
                json!({"refund_id": r.id, "channel": ch.id, "result": result}),
            )
            .await;
        }
    }

    /// Watched attempts: reverse any that processed after paymux moved on.
    async fn check_watched(&self, pol: &Arc<Policy>) {
        // A page per pass, continuing where the last one stopped, so every watched attempt is
        // visited however many there are.
        let after = self.retry.watch_cursor.lock().ok().and_then(|c| c.clone());
        let watched = crate::store::call(&self.store, move |s| {
            s.watched_attempts(after.as_ref().map(|(p, n)| (p.as_str(), *n)), WATCH_PAGE)
        })
        .await
        .unwrap_or_default();
        if let Ok(mut c) = self.retry.watch_cursor.lock() {
            *c = if watched.len() < WATCH_PAGE { None } else { watched.last().map(|a| (a.payment_id.clone(), a.n)) };
        }
        let (initial, max) = (
            pol.server.reconcile_initial_backoff.as_millis() as i64,
            pol.server.reconcile_max_backoff.as_millis() as i64,
        );
        let watched: Vec<_> = watched.into_iter().filter(|a| self.retry.due(&a.attempt_ref, now_ms())).collect();
        side_by_side(watched, |a| {
            let (engine, pol) = (self.clone(), pol.clone());
            async move { engine.check_watched_one(&pol, a, initial, max).await }
        })
        .await;
    }

    /// Asks a watched attempt's channel about it and reverses it if it processed. The
    /// attempt holding the payment is watched only when a cancel of it went unanswered (see
    /// [`Engine::cancel`]): it is never reversed, but a payment that completed meanwhile
    /// takes the provider's cancel of it.
    async fn check_watched_one(&self, pol: &Policy, mut a: AttemptRow, initial: i64, max: i64) {
        let Some(ch) = pol.holding_channel(&a.channel).cloned() else { return };
        let pid = a.payment_id.clone();
        let Ok(Some(mut p)) = crate::store::call(&self.store, move |s| s.get_payment(&pid)).await else { return };
        let holding = p.attempt_ref.as_deref() == Some(a.attempt_ref.as_str());
        let settled = if holding {
            let since = self.retry.seen_since(&a.attempt_ref, now_ms());
            let ctx = Ctx {
                request_id: crate::domain::new_id("rec"),
                actor: "system".into(),
                deadline: Instant::now() + pol.server.request_deadline,
            };
            self.settle_cancel_in_doubt(&ctx, pol, &ch, &mut p, since).await
        } else {
            a.outcome == "pending"
        };
        if holding || settled {
            if settled {
                self.retry.done(&a.attempt_ref);
                let aref = a.attempt_ref.clone();
                let _ = crate::store::call(&self.store, move |s| s.set_attempt_watch(&aref, false)).await;
            } else {
                self.retry.again(&a.attempt_ref, now_ms(), initial, max);
            }
            return;
        }
        let ctx = Ctx {
            request_id: crate::domain::new_id("rec"),
            actor: "system".into(),
            deadline: Instant::now() + pol.server.request_deadline,
        };
        let found = self.query_ref(&ctx, &ch, &p, &a.attempt_ref, a.provider_ref.clone()).await;
        let keep_watching = match found {
            QueryOutcome::Found(pp) => match pp.state {
                ProviderState::Failed { .. } | ProviderState::Canceled => false,
                state => {
                    let reversed = self.reverse(&ctx, &ch, &a, &pp.provider_ref, &state).await;
                    if reversed {
                        // Kept on the attempt: a late callback must not queue it again.
                        a.outcome = REVERSED.into();
                    }
                    !reversed
                }
            },
            QueryOutcome::NotFound { authoritative: true } => now_ms() - a.started_at < WATCH_WINDOW_MS,
            _ => true,
        };
        if keep_watching {
            self.retry.again(&a.attempt_ref, now_ms(), initial, max);
        } else {
            self.retry.done(&a.attempt_ref);
            a.watch = false;
            let _ = crate::store::call(&self.store, move |s| s.update_attempt(&a)).await;
        }
    }

    /// A cancel of the payment's holding attempt went unanswered: once the payment is final,
    /// ask the provider whether it canceled it (Antom cancels a paid wallet payment, refunding
    /// the payer) and take that. True when settled: the payment is canceled or refunded
    /// anyway, the provider says it holds it otherwise once the cancel can no longer be on
    /// its way ([`absence_window`] after the watch was first seen), or the watch window has
    /// passed since then. Also the cancel's own follow-up when its answer was lost (`since`:
    /// now), under the request's context.
    pub(crate) async fn settle_cancel_in_doubt(
        &self,
        ctx: &Ctx,
        pol: &Policy,
        ch: &Channel,
        p: &mut PaymentRow,
        since: i64,
    ) -> bool {
        let waited = now_ms() - since;
        let expired = waited >= WATCH_WINDOW_MS;
        match p.status {
            // Still open: its own reconciliation adopts whatever the cancel did.
            s if !s.is_final() => return expired,
            PaymentStatus::Succeeded if p.refunded == 0 => {}
            _ => return true,
        }
        match self.query_state(ctx, pol, p).await {
            Some(QueryOutcome::Found(found)) if found.state == ProviderState::Canceled => {
                self.take_providers_cancel(ctx, p).await.is_ok()
            }
            // Not canceled (yet): believed once a cancel still on its way would have landed.
            Some(QueryOutcome::Found(_)) => waited >= absence_window(ch),
            _ => expired,
        }
    }

    /// Stores `p`, a payment paymux saw completed, as canceled: its provider canceled it (the
    /// payer refunded in full) on a cancel whose answer was lost. Audited. False when the
    /// store refused (a refund came first).
    async fn take_providers_cancel(&self, ctx: &Ctx, p: &mut PaymentRow) -> Result<bool, EngineError> {
        p.status = PaymentStatus::Canceled;
        p.next_action = None;
        p.reconcile_at = None;
        p.updated_at = now_ms();
        let saved = self.save_payment(p, None).await?;
        if saved {
            self.audit(ctx, "payment.sync", Some(&p.id), "canceled", json!({"channel": p.channel, "by": "cancel"}))
                .await;
        }
        Ok(saved)
    }

    /// Cancels (or refunds, when captured) a payment a channel processed after paymux had
    /// moved on from it. Returns true when the reversal is done.
    async fn reverse(
        &self,
        ctx: &Ctx,
        ch: &Arc<Channel>,
        a: &AttemptRow,
        provider_ref: &str,
        state: &ProviderState,
    ) -> bool {
        let pid = a.payment_id.clone();
        let Ok(Some(p)) = crate::store::call(&self.store, move |s| s.get_payment(&pid)).await else { return false };
        let (aref, pref) = (a.attempt_ref.clone(), provider_ref.to_string());
        let done = if *state == ProviderState::Succeeded {
            let Ok(money) = Money::new(p.amount, p.currency) else { return false };
            let spec = super::ops::RefundSpec {
                refund_id: format!("{}-reversal", a.attempt_ref),
                payment_id: p.id.clone(),
                provider_ref: pref,
                money,
                reason: Some("duplicate".into()),
            };
            matches!(self.send_refund_of(ch, spec, ctx).await, RefundOutcome::Accepted { .. })
        } else {
            let Ok(req) = self.build(ch, move |c| c.build_cancel(&aref, &pref)).await else { return false };
            let (res, _) = self.send(ch, &req, Some(ctx.remaining())).await;
            matches!(res.map(|r| ch.connector.parse_cancel(&req, &r)), Ok(CancelOutcome::Canceled))
        };
        self.metrics
            .orphan_reversals
            .with_label_values(&[ch.id.as_str(), if done { "reversed" } else { "failed" }])
            .inc();
        self.audit(
            ctx,
            "attempt.reversal",
            Some(&a.payment_id),
            if done { "reversed" } else { "failed" },
            json!({"channel": ch.id, "attempt_ref": a.attempt_ref}),
        )
        .await;
        tracing::warn!(channel = %ch.id, payment_id = %a.payment_id, reversed = done, "a channel processed a payment paymux had moved on from");
        done
    }
}

/// How long after a request was sent to `ch` its provider's "no record of it" is believed:
/// two attempt timeouts and a second, well past the time paymux waits for an answer.
fn absence_window(ch: &Channel) -> i64 {
    2 * ch.transport.attempt_timeout().as_millis() as i64 + 1000
}

/// Runs `work` on each item, [`IN_FLIGHT`] at a time, and returns when all are done: a
/// provider that does not answer costs a pass its attempt timeout once, not once per item.
async fn side_by_side<T, Fut>(items: Vec<T>, work: impl Fn(T) -> Fut)
where
    T: Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut running = tokio::task::JoinSet::new();
    for item in items {
        let (slots, job) = (slots.clone(), work(item));
        running.spawn(async move {
            let _slot = slots.acquire().await;
            job.await
        });
    }
    while let Some(done) = running.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a reconciler query failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RetrySchedule;

    #[test]
    fn retry_schedule_backs_off_per_item_and_resets_when_done() {
        let s = RetrySchedule::default();
        assert!(s.due("a", 0), "never queried: due");
        s.again("a", 0, 500, 1_600);
        assert!(!s.due("a", 499) && s.due("a", 500));
        s.again("a", 500, 500, 1_600); // waits 1000
        assert!(!s.due("a", 1_499) && s.due("a", 1_500));
        s.again("a", 1_500, 500, 1_600); // 2000, capped at 1600
        assert!(!s.due("a", 3_099) && s.due("a", 3_100));
        assert!(s.due("b", 0), "items back off independently");
        s.done("a");
        assert!(s.due("a", 0));
    }
}
