//! Create: the attempt loop over the routed channels, with the failover safety rules.

use super::*;
use crate::connector::transport::SendError;
use crate::connector::{CreateOutcome, CreateRequest, QueryOutcome};
use crate::store::{now_ms, IdemRecord, Write};
use serde_json::json;

/// The routing decision resolved to channels: the rule name and the channels to try.
pub struct Route {
    pub rule: String,
    pub channels: Vec<Arc<Channel>>,
}

/// One payment to create (borrowed: a caller that retries under a released key reuses it).
pub struct Create<'a> {
    /// Chosen by the caller, so its idempotency record can name it up front.
    pub id: &'a str,
    pub api_key_id: &'a str,
    pub payment: &'a NewPayment,
    pub route: &'a Route,
    pub idem: IdemSlot,
}

/// The idempotency key a create runs under. It is claimed in the transaction that records the
/// payment and its first attempt, and completed, with the rendered response, in the one that
/// records the result: two commits per payment in all.
pub struct IdemSlot {
    pub claim: IdemRecord,
    /// Renders the response a replay returns.
    pub render: fn(&PaymentView) -> Vec<u8>,
}

/// How long after a payment was created a retry may still send its create again to learn
/// the payer's action (`Engine::recover_created`). Payer actions (a wallet's cashier page)
/// expire within minutes at the providers paymux speaks.
const ACTION_REFETCH_WINDOW_MS: i64 = 30 * 60 * 1000;

/// A create sent under `attempt_ref` at `at` that got no clear answer (`code` says why);
/// `taken` when the provider said it took it (but not as which payment).
struct Unanswered<'a> {
    create: &'a crate::connector::WireRequest,
    attempt_ref: &'a str,
    code: String,
    at: Instant,
    taken: bool,
}

/// How one attempt ended, for the loop's decision.
enum Step {
    /// The payment now lives on this channel (final or not).
    Landed {
        outcome: &'static str,
        state: ProviderState,
        provider_ref: Option<String>,
        next_action: Option<serde_json::Value>,
        error: Option<String>,
    },
    /// Certainly not processed: try the next channel. `message` explains why, for the merchant.
    Next { outcome: &'static str, code: String, message: String, watch: bool },
    /// Unknown after a status query: stop here, leave it to the reconciler.
    Unknown { code: String },
}

impl Engine {
    /// Creates a payment: stores it, tries its route's channels in order, returns the result
    /// and its rendered response. Fails with `StoreError::KeyTaken` (nothing stored) when the
    /// idempotency key turns out to be held already.
    pub async fn create(
        &self,
        ctx: &Ctx,
        policy: Arc<Policy>,
        c: Create<'_>,
    ) -> Result<(PaymentView, Vec<u8>), EngineError> {
        let Create { id, api_key_id, payment: np, route, idem } = c;
        let (rule, channels) = (route.rule.as_str(), &route.channels);
        let id = id.to_string();
        let now = now_ms();
        let mut p = PaymentRow {
            id: id.clone(),
            api_key_id: api_key_id.to_string(),
            order_id: np.order_id.clone(),
            method: np.method,
            amount: np.money.minor(),
            currency: np.money.currency(),
            status: PaymentStatus::Processing,
            channel: None,
            attempt_ref: None,
            provider_ref: None,
            route_rule: rule.to_string(),
            next_action: None,
            error_code: None,
            error_message: None,
            refunded: 0,
            metadata: serde_json::to_value(&np.metadata).unwrap_or_default(),
            customer: np.customer.as_ref().map(|c| serde_json::to_value(c).unwrap_or_default()).unwrap_or_default(),
            return_url: np.return_url.clone(),
            policy_version: policy.version.clone(),
            created_at: now,
            updated_at: now,
            reconcile_at: None,
            reconcile_backoff_ms: 0,
        };
        // The key's claim and the payment row are written with the first attempt, in one
        // transaction.
        let (api_key, key) = (idem.claim.api_key_id.clone(), idem.claim.key.clone());
        let mut pending_insert = vec![Write::ClaimIdempotency(idem.claim), Write::InsertPayment(p.clone())];
        let ids: Vec<&str> = channels.iter().map(|c| c.id.as_str()).collect();
        // Recorded once the payment exists (its first commit claimed the key), never for a
        // request that turns out to be a replay.
        let decision = json!({"rule": rule, "channels": ids, "policy_version": policy.version});
        let mut decision = Some(decision);

        let mut attempts: Vec<AttemptRow> = Vec::new();
        let mut last_error = "no_channel".to_string();
        let mut last_message = String::new();
        let mut landed = false;
        for (i, ch) in channels.iter().enumerate() {
            if ctx.remaining().is_zero() {
                last_error = "deadline_exceeded".into();
                break;
            }
            let n = attempts.len() as i64 + 1;
            let mut a = AttemptRow::pending(&id, n, &ch.id, now_ms());
            let attempt_ref = a.attempt_ref.clone();
            // Recorded before sending: after a crash, the reconciler knows this channel may
            // hold the payment under this reference.
            let ops: Vec<Write> =
                std::mem::take(&mut pending_insert).into_iter().chain([Write::InsertAttempt(a.clone())]).collect();
            crate::store::call(&self.store, move |s| s.write_batch(ops)).await?;
            if let Some(d) = decision.take() {
                self.audit(ctx, "route.decision", Some(&id), "routed", d).await;
            }
            let (step, latency) = self.attempt(ctx, ch, &p, np, &attempt_ref).await;
            a.latency_ms = latency as i64;
            match step {
                Step::Landed { outcome, state, provider_ref, next_action, error } => {
                    a.outcome = outcome.into();
                    a.error_code = error;
                    a.provider_ref = provider_ref.clone();
                    p.channel = Some(ch.id.clone());
                    p.attempt_ref = Some(attempt_ref.clone());
                    p.provider_ref = provider_ref;
                    p.next_action = next_action;
                    apply_state(&mut p, &state, now_ms());
                    if !p.status.is_final() {
                        p.reconcile_at = Some(now_ms() + policy.server.reconcile_initial_backoff.as_millis() as i64);
                        p.reconcile_backoff_ms = policy.server.reconcile_initial_backoff.as_millis() as i64;
                    }
                    landed = true;
                }
                Step::Next { outcome, code, message, watch } => {
                    last_message = format!("{}: {message}", ch.id);
                    a.outcome = outcome.into();
                    a.error_code = Some(code.clone());
                    a.watch = watch;
                    if let Some(next) = channels.get(i + 1) {
                        // The label is a bounded class; the provider's own code is in the
                        // attempt record and the audit log.
                        let reason = match outcome {
                            "not_sent" if code == "connect_failed" => "connect_failed",
                            "not_sent" => "not_sendable",
                            "not_found_after_query" => "ambiguous_not_processed",
                            _ => "not_processed",
                        };
                        self.metrics.failovers.with_label_values(&[ch.id.as_str(), next.id.as_str(), reason]).inc();
                    }
                    last_error = code;
                }
                Step::Unknown { code } => {
                    a.outcome = "unknown".into();
                    a.error_code = Some(code.clone());
                    p.channel = Some(ch.id.clone());
                    p.attempt_ref = Some(attempt_ref.clone());
                    p.status = PaymentStatus::Processing;
                    p.error_code = Some(code);
                    p.reconcile_at = Some(now_ms() + policy.server.reconcile_initial_backoff.as_millis() as i64);
                    p.reconcile_backoff_ms = policy.server.reconcile_initial_backoff.as_millis() as i64;
                    landed = true;
                }
            }
            self.metrics.channel_attempts.with_label_values(&[&ch.id, &a.outcome]).inc();
            self.audit(ctx, "attempt", Some(&id), &a.outcome, json!({"channel": ch.id, "n": n, "attempt_ref": attempt_ref, "error_code": a.error_code, "latency_ms": a.latency_ms})).await;
            attempts.push(a);
            if landed {
                break;
            }
            // Durable before the next channel is tried (the watch flag must survive a crash).
            let row = attempts[attempts.len() - 1].clone();
            crate::store::call(&self.store, move |s| s.update_attempt(&row)).await?;
        }
        if !landed {
            p.status = PaymentStatus::Failed;
            p.error_code = Some(if channels.is_empty() { "no_channel".into() } else { last_error });
            p.error_message = Some(if last_message.is_empty() {
                "no channel could take the payment".into()
            } else {
                format!("no channel could take the payment (last: {last_message})")
            });
            p.updated_at = now_ms();
        }
        // The last attempt's outcome, the payment's result and the response replays return
        // commit together.
        let view = PaymentView { payment: p, attempts };
        let body = (idem.render)(&view);
        let result = |mut ops: Vec<Write>| {
            if landed {
                ops.extend(view.attempts.last().cloned().map(Write::UpdateAttempt));
            }
            ops.push(Write::UpdatePayment(view.payment.clone()));
            ops.push(Write::CompleteIdempotency {
                api_key_id: api_key.clone(),
                key: key.clone(),
                status: 201,
                body: body.clone(),
            });
            ops
        };
        // Once a request went out (the payment and its first attempt are stored), a result
        // the store refuses is written again in the background until it takes it (built
        // again for that: no copy on the way of every payment).
        let sent = pending_insert.is_empty();
        let ops = result(pending_insert);
        if let Err(e) = crate::store::call(&self.store, move |s| s.write_batch(ops)).await {
            if sent {
                tracing::error!(payment_id = %view.payment.id, error = %e, "could not store a create's result; retrying in the background");
                self.unstored.push(result(Vec::new()));
            }
            return Err(e.into());
        }
        if let Some(d) = decision.take() {
            self.audit(ctx, "route.decision", Some(&id), "routed", d).await;
        }
        self.count_status(&view.payment, None);
        Ok((view, body))
    }

    /// The channel's create request for attempt `attempt_ref` of payment `p` (built off the
    /// async workers when the channel's signing is expensive).
    async fn build_create(
        &self,
        ch: &Arc<Channel>,
        p: &PaymentRow,
        np: &NewPayment,
        attempt_ref: &str,
    ) -> Result<crate::connector::WireRequest, crate::connector::BuildError> {
        let customer = np.customer.clone().unwrap_or_default();
        let (pid, aref, oid, notify) =
            (p.id.clone(), attempt_ref.to_string(), p.order_id.clone(), ch.notify_url.clone());
        let (money, method, pmd, ret, md) =
            (np.money, np.method, np.payment_method_data.clone(), np.return_url.clone(), np.metadata.clone());
        self.build(ch, move |c| {
            c.build_create(&CreateRequest {
                payment_id: &pid,
                attempt_ref: &aref,
                money,
                method,
                order_id: &oid,
                customer_id: customer.id.as_deref(),
                customer_email: customer.email.as_deref(),
                payment_method_data: pmd.as_ref(),
                return_url: ret.as_deref(),
                metadata: &md,
                notify_url: &notify,
            })
        })
        .await
    }

    /// A payment a stopped process left behind, found again by a retry of its create (same
    /// key, same request, so `np` is what was sent). It is synced with its channel first; when
    /// the provider holds it awaiting the payer but its status query does not say where to
    /// send them (Antom's inquiry has no redirect URL), the create is sent again under the
    /// attempt's own reference to fetch that action (see `refetch_action`), and stored.
    pub async fn recover_created(
        &self,
        ctx: &Ctx,
        policy: &Policy,
        id: &str,
        np: &NewPayment,
    ) -> Result<PaymentView, EngineError> {
        let v = self.get(ctx, policy, id).await?;
        let p = &v.payment;
        if p.status != PaymentStatus::RequiresAction || p.next_action.is_some() {
            return Ok(v);
        }
        // Only while such an action can still be live: sent again much later, under an
        // idempotency reference the provider may have forgotten, the create could be taken
        // as a new payment.
        if now_ms() - p.created_at > ACTION_REFETCH_WINDOW_MS {
            return Ok(v);
        }
        let (Some(ch), Some(aref), Some(pref)) =
            (holding_channel(policy, p), p.attempt_ref.clone(), p.provider_ref.clone().filter(|r| !r.is_empty()))
        else {
            return Ok(v);
        };
        let Ok(req) = self.build_create(&ch, p, np, &aref).await else { return Ok(v) };
        let Some(action) = self.refetch_action(ctx, &ch, &req, &pref).await else { return Ok(v) };
        // Re-read: a callback may have moved the payment on while the request was out.
        let mut fresh = self.view(id).await?;
        if fresh.payment.status == PaymentStatus::RequiresAction && fresh.payment.next_action.is_none() {
            fresh.payment.next_action = Some(action);
            fresh.payment.updated_at = now_ms();
            if self.save_payment(&fresh.payment, None).await? {
                self.audit(
                    ctx,
                    "payment.action_recovered",
                    Some(id),
                    fresh.payment.status.as_str(),
                    json!({"channel": ch.id}),
                )
                .await;
            }
        }
        self.view(id).await
    }

    async fn attempt(
        &self,
        ctx: &Ctx,
        ch: &Arc<Channel>,
        p: &PaymentRow,
        np: &NewPayment,
        attempt_ref: &str,
    ) -> (Step, u64) {
        let built = self.build_create(ch, p, np, attempt_ref).await;
        let req = match built {
            Ok(r) => r,
            Err(e) => {
                return (
                    Step::Next { outcome: "not_sent", code: e.code.to_string(), message: e.message, watch: false },
                    0,
                )
            }
        };
        let (res, latency) = self.send(ch, &req, Some(ctx.remaining())).await;
        let sent_at = Instant::now();
        let outcome = match res {
            Err(SendError::NotSent(why)) => {
                // The app's answer keeps the provider's transport details out; the operator
                // needs them (refused, timed out, a certificate the store does not trust).
                tracing::warn!(channel = %ch.id, error = %why, "could not reach the provider; nothing was sent");
                let message = "could not connect to the provider".to_string();
                return (
                    Step::Next { outcome: "not_sent", code: "connect_failed".into(), message, watch: false },
                    latency,
                );
            }
            Err(e) => CreateOutcome::Ambiguous { code: e.code().to_string() },
            Ok(resp) => ch.connector.parse_create(&req, &resp),
        };
        let step = match outcome {
            CreateOutcome::Accepted(pp) => Step::Landed {
                outcome: "accepted",
                state: match pp.state {
                    ProviderState::Failed { code, message } => {
                        ProviderState::Failed { code, message: without_tokens(message, np) }
                    }
                    state => state,
                },
                provider_ref: Some(pp.provider_ref),
                next_action: pp.next_action,
                error: None,
            },
            CreateOutcome::Declined { provider_ref, code, message } => Step::Landed {
                outcome: "declined",
                state: ProviderState::Failed { code: code.clone(), message: without_tokens(message, np) },
                provider_ref,
                next_action: None,
                error: Some(code),
            },
            CreateOutcome::NotProcessed { code, message } => {
                Step::Next { outcome: "not_processed", code, message: without_tokens(message, np), watch: false }
            }
            CreateOutcome::Ambiguous { code } => {
                let sent = Unanswered { create: &req, attempt_ref, code, at: sent_at, taken: false };
                self.resolve_ambiguous(ctx, ch, p, sent).await
            }
            CreateOutcome::Unnamed { code } => {
                let sent = Unanswered { create: &req, attempt_ref, code, at: sent_at, taken: true };
                self.resolve_ambiguous(ctx, ch, p, sent).await
            }
        };
        (step, latency)
    }

    /// After an ambiguous send: ask the provider before doing anything else.
    async fn resolve_ambiguous(&self, ctx: &Ctx, ch: &Arc<Channel>, p: &PaymentRow, sent: Unanswered<'_>) -> Step {
        let Unanswered { create, attempt_ref, code, at, taken } = sent;
        let prefix = if taken { TAKEN_UNNAMED } else { "" };
        let since = at.elapsed().as_millis() as u64;
        match self.ask(ctx, ch, p, attempt_ref, None, since).await {
            QueryOutcome::Found(mut pp) => {
                if pp.state == ProviderState::RequiresAction && pp.next_action.is_none() {
                    pp.next_action = self.refetch_action(ctx, ch, create, &pp.provider_ref).await;
                }
                Step::Landed {
                    outcome: "accepted_after_query",
                    state: pp.state,
                    provider_ref: Some(pp.provider_ref),
                    next_action: pp.next_action,
                    error: None,
                }
            }
            // Certainly not there: move on, but keep watching this reference in case a request
            // the provider was still holding completes later (it would then be reversed).
            // Not after the provider said it took it: its query may lag its create.
            QueryOutcome::NotFound { authoritative: true } if !taken => Step::Next {
                outcome: "not_found_after_query",
                code: format!("{code}_not_processed"),
                message: "the provider answered ambiguously and then showed no such payment".into(),
                watch: true,
            },
            // Left processing for the reconciler; one the provider said it took is marked so
            // that its absence is never taken for a failure.
            QueryOutcome::NotFound { .. } => Step::Unknown { code: format!("{prefix}{code}_status_pending") },
            QueryOutcome::Unknown { code: qc } => Step::Unknown { code: format!("{prefix}{code}_query_{qc}") },
        }
    }

    /// A status query shows that the payer has an action to take, but not what it is (Antom's
    /// inquiry carries no redirect URL). The create is sent again, unchanged: under the same
    /// idempotency reference the provider answers with the payment it already holds, action
    /// included, and creates nothing. `None` when that answer does not come.
    async fn refetch_action(
        &self,
        ctx: &Ctx,
        ch: &Arc<Channel>,
        create: &crate::connector::WireRequest,
        provider_ref: &str,
    ) -> Option<serde_json::Value> {
        let (res, _) = self.send(ch, create, Some(ctx.remaining())).await;
        match ch.connector.parse_create(create, &res.ok()?) {
            // Only from the payment the query found: a provider that ignored the reference
            // would otherwise send the payer to a second payment.
            CreateOutcome::Accepted(pp) if pp.provider_ref == provider_ref => pp.next_action,
            _ => None,
        }
    }
}

/// A provider's message with the payment's tokens taken out: a PSP echoes the token it could
/// not use ("No such PaymentMethod: 'tok_…'"), and paymux keeps no token.
fn without_tokens(message: String, np: &NewPayment) -> String {
    let Some(serde_json::Value::Object(pmd)) = &np.payment_method_data else { return message };
    pmd.values().filter_map(serde_json::Value::as_str).filter(|t| t.len() >= 4).fold(message, |m, t| {
        if m.contains(t) {
            m.replace(t, "the token in payment_method_data")
        } else {
            m
        }
    })
}
