//! The Stripe API handlers: plain functions over the locked simulator state that return the
//! answer object or a Stripe error, and record the webhook events the change causes.

use super::cards::{self, Behaviour};
use super::listing::{self, Listed};
use super::model::{
    charge_json, decline_error, intent_json, payment_method_json, refund_json, ApiError, Charge, Intent, PaymentMethod,
    PiStatus, Refund,
};
use super::params::*;
use super::search::{self, Clause};
use super::{first, major, now, Ctx, State, StripeSim};
use crate::crypto;
use crate::domain::new_id;
use crate::sandbox::form::Params;
use crate::sandbox::sim::Stats;
use serde_json::{json, Value};

fn intent_in<'a>(st: &'a State, id: &str) -> Result<&'a Intent, ApiError> {
    st.intents.get(id).map(Box::as_ref).ok_or_else(|| ApiError::no_such("payment_intent", id, "intent"))
}

fn intent_mut<'a>(st: &'a mut State, id: &str) -> Result<&'a mut Intent, ApiError> {
    st.intents.get_mut(id).map(Box::as_mut).ok_or_else(|| ApiError::no_such("payment_intent", id, "intent"))
}

impl StripeSim {
    /// Resolves `payment_method` or `payment_method_data[card][token]` to a stored method.
    pub(super) fn resolve_payment_method(&self, st: &mut State, p: &Params) -> Result<Option<String>, ApiError> {
        if let Some(id) = scalar(p, "payment_method")? {
            return attach(st, id, "payment_method").map(Some);
        }
        if p.get(&["payment_method_data"]).is_none() {
            return Ok(None);
        }
        match p.str(&["payment_method_data", "type"]) {
            Some("card") => {}
            Some(t) => {
                return Err(ApiError::invalid(
                    format!("The payment method type \"{t}\" is invalid. The sandbox simulates card payments only."),
                    Some("payment_method_data[type]"),
                    Some("payment_method_invalid_parameter"),
                ))
            }
            None => return Err(ApiError::missing("payment_method_data[type]")),
        }
        let token = p
            .str(&["payment_method_data", "card", "token"])
            .ok_or_else(|| ApiError::missing("payment_method_data[card][token]"))?;
        attach(st, token, "payment_method_data[card][token]").map(Some)
    }

    /// Confirms intent `id` with its payment method. `authenticated`: 3-D Secure is done;
    /// `no_action`: the payer is not there to authenticate (`off_session`, or
    /// `error_on_requires_action`), so a payment that needs it fails as Stripe fails it.
    pub(super) fn confirm(
        &self,
        st: &mut State,
        ctx: &mut Ctx<'_>,
        id: &str,
        authenticated: bool,
        no_action: bool,
    ) -> Result<(), ApiError> {
        let State { intents, charges, methods, .. } = st;
        let pi = intents.get_mut(id).ok_or_else(|| ApiError::no_such("payment_intent", id, "intent"))?;
        let pm_id = pi.payment_method.clone().unwrap_or_default();
        let pm = methods.get(&pm_id).ok_or_else(|| ApiError::state("The PaymentIntent has no payment method."))?;
        pi.last_payment_error = None;
        pi.next_action = None;
        let wants_3ds = matches!(pm.card.behaviour, Behaviour::Authenticate | Behaviour::AuthenticateThenDecline(_))
            || matches!(pi.request_three_d_secure.as_str(), "any" | "challenge");
        if wants_3ds && !authenticated && !no_action {
            pi.status = PiStatus::RequiresAction;
            pi.next_action = Some(json!({
                "type": "redirect_to_url",
                "redirect_to_url": {
                    "return_url": pi.return_url,
                    "url": format!("{}/pay/{}", self.setup.base_url, pi.id),
                },
            }));
            ctx.event("payment_intent.requires_action", intent_json(pi));
            return Ok(());
        }
        let manual = pi.capture_method == "manual";
        let decline = match &pm.card.behaviour {
            _ if wants_3ds && !authenticated => Some(&cards::AUTHENTICATION_REQUIRED),
            Behaviour::Decline(d) | Behaviour::AuthenticateThenDecline(d) => Some(d),
            _ => None,
        };
        let ch = Charge {
            id: new_id("ch"),
            payment_intent: pi.id.clone(),
            amount: pi.amount,
            currency: pi.currency.clone(),
            created: now(),
            payment_method: pm.id.clone(),
            card: pm.card,
            failure: decline,
            captured: decline.is_none() && !manual,
            amount_captured: if decline.is_none() && !manual { pi.amount } else { 0 },
            amount_refunded: 0,
            three_d_secure: authenticated,
            balance_transaction: (decline.is_none() && !manual).then(|| new_id("txn")),
        };
        pi.latest_charge = Some(ch.id.clone());
        if let Some(d) = decline {
            let err = decline_error(d, &ch.id, pm);
            pi.status = PiStatus::RequiresPaymentMethod;
            pi.last_payment_error = Some(Value::Object(err.clone()));
            ctx.event("charge.failed", charge_json(&ch, pi, pm));
            charges.insert(ch.id.clone(), Box::new(ch));
            let pi_json = intent_json(pi);
            ctx.event("payment_intent.payment_failed", pi_json.clone());
            let mut err = err;
            err.insert("payment_intent".into(), pi_json);
            return Err(ApiError::card(err));
        }
        if manual {
            pi.status = PiStatus::RequiresCapture;
            pi.amount_capturable = pi.amount;
            ctx.event("charge.succeeded", charge_json(&ch, pi, pm));
            ctx.event("payment_intent.amount_capturable_updated", intent_json(pi));
        } else {
            pi.status = PiStatus::Succeeded;
            pi.amount_received = pi.amount;
            Stats::bump(&self.stats.payments_succeeded);
            ctx.event("charge.succeeded", charge_json(&ch, pi, pm));
            ctx.event("payment_intent.succeeded", intent_json(pi));
        }
        charges.insert(ch.id.clone(), Box::new(ch));
        Ok(())
    }

    pub(super) fn create_intent(
        &self,
        st: &mut State,
        ctx: &mut Ctx<'_>,
        p: &Params,
        _: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, CREATE_PARAMS)?;
        let amount = amount_param(p, "amount")?.ok_or_else(|| ApiError::missing("amount"))?;
        let currency = currency_param(p)?;
        check_amount(amount, &currency)?;
        let metadata = metadata_param(p)?;
        let capture_method = one_of(p, "capture_method", &["automatic", "automatic_async", "manual"])?;
        let confirmation_method = one_of(p, "confirmation_method", &["automatic", "manual"])?;
        let confirm = bool_param(p, "confirm")?.unwrap_or(false);
        let no_action = no_action_param(p)?;
        for name in ["off_session", "error_on_requires_action"] {
            if !confirm && p.get(&[name]).is_some() {
                return Err(ApiError::invalid(
                    format!("The parameter {name} can only be used with confirm=true."),
                    Some(name),
                    None,
                ));
            }
        }
        let types = payment_method_types(p)?;
        let three_ds = three_ds_param(p)?;
        let setup_future_usage = one_of(p, "setup_future_usage", &["off_session", "on_session"])?;
        let s = |name: &str| scalar(p, name).map(|v| v.map(String::from));
        let (return_url, description, receipt_email) = (s("return_url")?, s("description")?, s("receipt_email")?);
        let (customer, descriptor, suffix) =
            (s("customer")?, s("statement_descriptor")?, s("statement_descriptor_suffix")?);
        let payment_method = self.resolve_payment_method(st, p)?;
        if confirm && payment_method.is_none() {
            return Err(ApiError::state(
                "You cannot confirm this PaymentIntent because it's missing a payment method. You can either \
update the PaymentIntent with a payment method and then confirm it again, or confirm it again directly with a \
payment method or ConfirmationToken.",
            ));
        }
        let id = new_id("pi");
        let pi = Intent {
            client_secret: format!("{id}_secret_{}", new_id("s").trim_start_matches("s_")),
            id: id.clone(),
            amount,
            currency,
            status: if payment_method.is_some() {
                PiStatus::RequiresConfirmation
            } else {
                PiStatus::RequiresPaymentMethod
            },
            capture_method: capture_method.unwrap_or_else(|| "automatic_async".into()),
            confirmation_method: confirmation_method.unwrap_or_else(|| "automatic".into()),
            created: now(),
            metadata,
            description,
            receipt_email,
            customer,
            payment_method,
            payment_method_types: types.unwrap_or_else(|| vec!["card".into()]),
            return_url,
            request_three_d_secure: three_ds.unwrap_or_else(|| "automatic".into()),
            setup_future_usage,
            statement_descriptor: descriptor,
            statement_descriptor_suffix: suffix,
            last_payment_error: None,
            next_action: None,
            latest_charge: None,
            amount_received: 0,
            amount_capturable: 0,
            canceled_at: None,
            cancellation_reason: None,
            amount_refunded: 0,
        };
        ctx.event("payment_intent.created", intent_json(&pi));
        st.intents.insert(id.clone(), Box::new(pi));
        st.order.push(id.clone());
        Stats::bump(&self.stats.payments_created);
        if confirm {
            self.confirm(st, ctx, &id, false, no_action)?;
        }
        intent_in(st, &id).map(intent_json)
    }

    /// `POST /v1/payment_intents/:id`: changes a PaymentIntent without confirming it. Money
    /// fields only while it awaits a payment method, confirmation or action; metadata,
    /// description, receipt email and shipping in any status.
    pub(super) fn update_intent(
        &self,
        st: &mut State,
        _: &mut Ctx<'_>,
        p: &Params,
        ids: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, UPDATE_PARAMS)?;
        let id = first(ids);
        let status = intent_in(st, id)?.status;
        let editable = status.awaits_confirmation();
        if let Some(k) = p.unknown(UPDATE_ANY_STATUS).filter(|_| !editable) {
            return Err(ApiError::state(format!(
                "You cannot update this PaymentIntent's {k} because it has a status of {}. You may only update \
the {k} of a PaymentIntent with one of the following statuses: requires_payment_method, requires_confirmation, \
requires_action.",
                status.as_str()
            )));
        }
        let amount = amount_param(p, "amount")?;
        let currency = if scalar(p, "currency")?.is_some() { Some(currency_param(p)?) } else { None };
        let capture_method = one_of(p, "capture_method", &["automatic", "automatic_async", "manual"])?;
        let setup_future_usage = one_of(p, "setup_future_usage", &["off_session", "on_session"])?;
        let types = payment_method_types(p)?;
        let s = |name: &str| scalar(p, name).map(|v| v.map(String::from));
        let (description, receipt_email, customer) = (s("description")?, s("receipt_email")?, s("customer")?);
        let (descriptor, suffix) = (s("statement_descriptor")?, s("statement_descriptor_suffix")?);
        let payment_method = self.resolve_payment_method(st, p)?;
        let pi = intent_mut(st, id)?;
        if amount.is_some() || currency.is_some() {
            check_amount(amount.unwrap_or(pi.amount), currency.as_deref().unwrap_or(&pi.currency))?;
        }
        merge_metadata(p, &mut pi.metadata)?;
        pi.amount = amount.unwrap_or(pi.amount);
        pi.currency = currency.unwrap_or_else(|| pi.currency.clone());
        pi.capture_method = capture_method.unwrap_or_else(|| pi.capture_method.clone());
        pi.setup_future_usage = setup_future_usage.or_else(|| pi.setup_future_usage.clone());
        pi.payment_method_types = types.unwrap_or_else(|| pi.payment_method_types.clone());
        pi.description = description.or_else(|| pi.description.clone());
        pi.receipt_email = receipt_email.or_else(|| pi.receipt_email.clone());
        pi.customer = customer.or_else(|| pi.customer.clone());
        pi.statement_descriptor = descriptor.or_else(|| pi.statement_descriptor.clone());
        pi.statement_descriptor_suffix = suffix.or_else(|| pi.statement_descriptor_suffix.clone());
        if payment_method.is_some() {
            // A new payment method needs confirming again.
            pi.payment_method = payment_method;
            pi.status = PiStatus::RequiresConfirmation;
            pi.next_action = None;
        }
        Ok(intent_json(pi))
    }

    pub(super) fn confirm_intent(
        &self,
        st: &mut State,
        ctx: &mut Ctx<'_>,
        p: &Params,
        ids: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, CONFIRM_PARAMS)?;
        let id = first(ids);
        let status = intent_in(st, id)?.status;
        if !status.awaits_confirmation() {
            return Err(ApiError::state(format!(
                "You cannot confirm this PaymentIntent because it has a status of {}. Only a PaymentIntent with one \
of the following statuses may be confirmed: requires_confirmation, requires_payment_method, requires_action.",
                status.as_str()
            )));
        }
        let capture_method = one_of(p, "capture_method", &["automatic", "automatic_async", "manual"])?;
        let three_ds = three_ds_param(p)?;
        payment_method_types(p)?;
        let return_url = scalar(p, "return_url")?.map(String::from);
        let receipt_email = scalar(p, "receipt_email")?.map(String::from);
        let payment_method = self.resolve_payment_method(st, p)?;
        let pi = intent_mut(st, id)?;
        if payment_method.is_some() {
            pi.payment_method = payment_method;
        }
        if pi.payment_method.is_none() {
            return Err(ApiError::state(
                "You cannot confirm this PaymentIntent because it's missing a payment method. You can either \
update the PaymentIntent with a payment method and then confirm it again, or confirm it again directly with a \
payment method or ConfirmationToken.",
            ));
        }
        pi.capture_method = capture_method.unwrap_or_else(|| pi.capture_method.clone());
        pi.request_three_d_secure = three_ds.unwrap_or_else(|| pi.request_three_d_secure.clone());
        pi.return_url = return_url.or_else(|| pi.return_url.clone());
        pi.receipt_email = receipt_email.or_else(|| pi.receipt_email.clone());
        self.confirm(st, ctx, id, false, no_action_param(p)?)?;
        intent_in(st, id).map(intent_json)
    }

    pub(super) fn capture_intent(
        &self,
        st: &mut State,
        ctx: &mut Ctx<'_>,
        p: &Params,
        ids: &[String],
    ) -> Result<Value, ApiError> {
        allow(
            p,
            &["amount_to_capture", "expand", "final_capture", "statement_descriptor", "statement_descriptor_suffix"],
        )?;
        let id = first(ids);
        let amount = amount_param(p, "amount_to_capture")?;
        let State { intents, charges, methods, .. } = st;
        let pi = intents.get_mut(id).ok_or_else(|| ApiError::no_such("payment_intent", id, "intent"))?;
        if pi.status != PiStatus::RequiresCapture {
            return Err(ApiError::state(format!(
                "This PaymentIntent could not be captured because it has a status of {}. Only a PaymentIntent with \
one of the following statuses may be captured: requires_capture.",
                pi.status.as_str()
            )));
        }
        let amount = amount.unwrap_or(pi.amount_capturable);
        if amount > pi.amount_capturable {
            return Err(ApiError::invalid(
                format!(
                    "The amount to capture ({}) is greater than the amount capturable ({}).",
                    major(&pi.currency, amount),
                    major(&pi.currency, pi.amount_capturable)
                ),
                Some("amount_to_capture"),
                Some("amount_too_large"),
            ));
        }
        pi.status = PiStatus::Succeeded;
        pi.amount_received = amount;
        pi.amount_capturable = 0;
        if let Some(ch) = pi.latest_charge.as_ref().and_then(|c| charges.get_mut(c)) {
            ch.captured = true;
            ch.amount_captured = amount;
            // What is not captured is released, and shows as refunded on the charge.
            ch.amount_refunded = ch.amount - amount;
            ch.balance_transaction = Some(new_id("txn"));
            if let Some(pm) = methods.get(&ch.payment_method) {
                ctx.event("charge.captured", charge_json(ch, pi, pm));
            }
        }
        Stats::bump(&self.stats.payments_succeeded);
        let v = intent_json(pi);
        ctx.event("payment_intent.succeeded", v.clone());
        Ok(v)
    }

    pub(super) fn cancel_intent(
        &self,
        st: &mut State,
        ctx: &mut Ctx<'_>,
        p: &Params,
        ids: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, &["cancellation_reason", "expand"])?;
        let reason =
            one_of(p, "cancellation_reason", &["abandoned", "duplicate", "fraudulent", "requested_by_customer"])?;
        let State { intents, charges, .. } = st;
        let id = first(ids);
        let pi = intents.get_mut(id).ok_or_else(|| ApiError::no_such("payment_intent", id, "intent"))?;
        if !matches!(
            pi.status,
            PiStatus::RequiresPaymentMethod
                | PiStatus::RequiresCapture
                | PiStatus::RequiresConfirmation
                | PiStatus::RequiresAction
        ) {
            return Err(ApiError::state(format!(
                "You cannot cancel this PaymentIntent because it has a status of {}. Only a PaymentIntent with one \
of the following statuses may be canceled: requires_payment_method, requires_capture, requires_confirmation, \
requires_action, processing.",
                pi.status.as_str()
            )));
        }
        if pi.status == PiStatus::RequiresCapture {
            // The authorisation is released: the charge shows it refunded in full.
            if let Some(ch) = pi.latest_charge.as_ref().and_then(|c| charges.get_mut(c)) {
                ch.amount_refunded = ch.amount;
            }
        }
        pi.status = PiStatus::Canceled;
        pi.canceled_at = Some(now());
        pi.cancellation_reason = reason;
        pi.next_action = None;
        pi.amount_capturable = 0;
        let v = intent_json(pi);
        ctx.event("payment_intent.canceled", v.clone());
        Ok(v)
    }

    pub(super) fn retrieve_intent(
        &self,
        st: &mut State,
        _: &mut Ctx<'_>,
        p: &Params,
        ids: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, &["client_secret", "expand"])?;
        intent_in(st, first(ids)).map(intent_json)
    }

    pub(super) fn list_intents(
        &self,
        st: &mut State,
        _: &mut Ctx<'_>,
        p: &Params,
        _: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, &["limit", "expand", "starting_after", "ending_before", "customer", "created"])?;
        let customer = scalar(p, "customer")?;
        let all: Vec<&Intent> = st
            .order
            .iter()
            .rev()
            .filter_map(|id| st.intents.get(id).map(Box::as_ref))
            .filter(|pi| customer.is_none_or(|c| pi.customer.as_deref() == Some(c)))
            .collect();
        let how = Listed {
            kind: "payment_intent",
            url: "/v1/payment_intents",
            id: &|pi: &Intent| pi.id.as_str(),
            created: &|pi: &Intent| pi.created,
            render: &|pi: &Intent| Some(intent_json(pi)),
        };
        listing::page(p, &all, how)
    }

    pub(super) fn search_intents(
        &self,
        st: &mut State,
        _: &mut Ctx<'_>,
        p: &Params,
        _: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, &["query", "limit", "page", "expand"])?;
        let query = scalar(p, "query")?.ok_or_else(|| ApiError::missing("query"))?;
        let clauses =
            search::parse(query).map_err(|m| ApiError::invalid(format!("Invalid query: {m}"), Some("query"), None))?;
        let limit = limit_param(p)?;
        let offset = match scalar(p, "page")? {
            Some(s) => s.parse::<usize>().map_err(|_| ApiError::invalid("Invalid page token.", Some("page"), None))?,
            None => 0,
        };
        let hits: Vec<&Intent> = st
            .order
            .iter()
            .rev()
            .filter_map(|id| st.intents.get(id).map(Box::as_ref))
            .filter(|pi| clauses.iter().all(|c| matches(pi, c)))
            .collect();
        let page: Vec<Value> = hits.iter().skip(offset).take(limit).map(|pi| intent_json(pi)).collect();
        let has_more = hits.len() > offset + limit;
        Ok(json!({
            "object": "search_result",
            "data": page,
            "has_more": has_more,
            "next_page": if has_more { json!((offset + limit).to_string()) } else { Value::Null },
            "url": "/v1/payment_intents/search",
        }))
    }

    pub(super) fn create_refund(
        &self,
        st: &mut State,
        ctx: &mut Ctx<'_>,
        p: &Params,
        _: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, REFUND_PARAMS)?;
        let amount = amount_param(p, "amount")?;
        let reason = one_of(p, "reason", &["duplicate", "fraudulent", "requested_by_customer"])?;
        let metadata = metadata_param(p)?;
        let pi_id = match (scalar(p, "payment_intent")?, scalar(p, "charge")?) {
            (Some(pi), _) => pi.to_string(),
            (None, Some(ch)) => st.charges.get(ch).map(|c| c.payment_intent.clone()).ok_or_else(|| {
                ApiError::invalid(format!("No such charge: '{ch}'"), Some("charge"), Some("resource_missing"))
            })?,
            (None, None) => {
                return Err(ApiError::invalid(
                    "One of the following params should be provided for this request: payment_intent or charge.",
                    None,
                    Some("parameter_missing"),
                ))
            }
        };
        let State { intents, charges, refunds, methods, .. } = st;
        let pi = intents.get_mut(&pi_id).ok_or_else(|| {
            ApiError::invalid(
                format!("No such payment_intent: '{pi_id}'"),
                Some("payment_intent"),
                Some("resource_missing"),
            )
        })?;
        let charge_id = pi.latest_charge.clone().unwrap_or_default();
        if pi.status != PiStatus::Succeeded {
            return Err(ApiError::invalid(
                format!(
                    "This PaymentIntent ({pi_id}) does not have a successful charge to refund (status {}).",
                    pi.status.as_str()
                ),
                Some("payment_intent"),
                Some("payment_intent_unexpected_state"),
            ));
        }
        let remaining = pi.amount_received - pi.amount_refunded;
        if remaining <= 0 {
            return Err(ApiError::invalid(
                format!("Charge {charge_id} has already been refunded."),
                None,
                Some("charge_already_refunded"),
            ));
        }
        let amount = amount.unwrap_or(remaining);
        check_steps(amount, &pi.currency)?;
        if amount > remaining {
            return Err(ApiError::invalid(
                format!(
                    "Refund amount ({}) is greater than unrefunded amount on charge ({})",
                    major(&pi.currency, amount),
                    major(&pi.currency, remaining)
                ),
                Some("amount"),
                Some("amount_too_large"),
            ));
        }
        pi.amount_refunded += amount;
        let mut refund = Refund {
            id: new_id("re"),
            amount,
            currency: pi.currency.clone(),
            created: now(),
            charge: charge_id.clone(),
            payment_intent: pi_id.clone(),
            reason,
            metadata,
            status: "succeeded",
            balance_transaction: new_id("txn"),
            reference: None,
            failure_reason: None,
        };
        Stats::bump(&self.stats.refunds);
        let created = refund_json(&refund);
        ctx.event("refund.created", created.clone());
        if let Some(ch) = charges.get_mut(&charge_id) {
            ch.amount_refunded += amount;
            if let Some(pm) = methods.get(&ch.payment_method) {
                ctx.event("charge.refunded", charge_json(ch, pi, pm));
            }
        }
        // The acquirer reference arrives "later": Stripe announces it with refund.updated.
        refund.reference = Some(format!("{:0>23}", refund.created));
        ctx.event("refund.updated", refund_json(&refund));
        let card = charges.get(&charge_id).and_then(|c| methods.get(&c.payment_method)).map(|pm| pm.card);
        if card.is_some_and(|c| c.behaviour == Behaviour::RefundsFail) {
            // Accepted, then failed at the card network: the money stays with the merchant.
            refund.status = "failed";
            refund.failure_reason = Some("declined");
            pi.amount_refunded -= amount;
            if let Some(ch) = charges.get_mut(&charge_id) {
                ch.amount_refunded -= amount;
            }
            ctx.event("refund.failed", refund_json(&refund));
            ctx.event("charge.refund.updated", refund_json(&refund));
        }
        refunds.insert(refund.id.clone(), Box::new(refund));
        Ok(created)
    }

    /// `GET /v1/refunds?payment_intent=pi_...` (Stripe's list, filtered by intent; newest first).
    pub(super) fn list_refunds(
        &self,
        st: &mut State,
        _: &mut Ctx<'_>,
        p: &Params,
        _: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, &["limit", "expand", "payment_intent", "charge", "starting_after", "ending_before", "created"])?;
        let (pi, ch) = (scalar(p, "payment_intent")?, scalar(p, "charge")?);
        let mut all: Vec<&Refund> = st
            .refunds
            .values()
            .map(Box::as_ref)
            .filter(|r| pi.is_none_or(|x| r.payment_intent == x) && ch.is_none_or(|x| r.charge == x))
            .collect();
        all.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        let how = Listed {
            kind: "refund",
            url: "/v1/refunds",
            id: &|r: &Refund| r.id.as_str(),
            created: &|r: &Refund| r.created,
            render: &|r: &Refund| Some(refund_json(r)),
        };
        listing::page(p, &all, how)
    }

    pub(super) fn retrieve_refund(
        &self,
        st: &mut State,
        _: &mut Ctx<'_>,
        p: &Params,
        ids: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, &["expand"])?;
        let id = first(ids);
        st.refunds.get(id).map(|r| refund_json(r)).ok_or_else(|| ApiError::no_such("refund", id, "id"))
    }

    /// `POST /v1/refunds/:id`: a refund's metadata is all that can change.
    pub(super) fn update_refund(
        &self,
        st: &mut State,
        _: &mut Ctx<'_>,
        p: &Params,
        ids: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, &["expand", "metadata"])?;
        let id = first(ids);
        let r = st.refunds.get_mut(id).ok_or_else(|| ApiError::no_such("refund", id, "id"))?;
        merge_metadata(p, &mut r.metadata)?;
        Ok(refund_json(r))
    }

    /// `GET /v1/charges`, newest first, optionally those of one PaymentIntent.
    pub(super) fn list_charges(
        &self,
        st: &mut State,
        _: &mut Ctx<'_>,
        p: &Params,
        _: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, &["limit", "expand", "payment_intent", "customer", "starting_after", "ending_before", "created"])?;
        let (pi, customer) = (scalar(p, "payment_intent")?, scalar(p, "customer")?);
        let of_customer = |c: &Charge| {
            customer.is_none_or(|x| st.intents.get(&c.payment_intent).is_some_and(|i| i.customer.as_deref() == Some(x)))
        };
        let mut all: Vec<&Charge> = st
            .charges
            .values()
            .map(Box::as_ref)
            .filter(|c| pi.is_none_or(|x| c.payment_intent == x) && of_customer(c))
            .collect();
        all.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
        let how = Listed {
            kind: "charge",
            url: "/v1/charges",
            id: &|c: &Charge| c.id.as_str(),
            created: &|c: &Charge| c.created,
            render: &|c: &Charge| {
                Some(charge_json(c, st.intents.get(&c.payment_intent)?, st.methods.get(&c.payment_method)?))
            },
        };
        listing::page(p, &all, how)
    }

    pub(super) fn retrieve_charge(
        &self,
        st: &mut State,
        _: &mut Ctx<'_>,
        p: &Params,
        ids: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, &["expand"])?;
        let id = first(ids);
        let ch = st.charges.get(id).ok_or_else(|| ApiError::no_such("charge", id, "id"))?;
        let pi = intent_in(st, &ch.payment_intent)?;
        let pm = st.methods.get(&ch.payment_method).ok_or_else(|| ApiError::no_such("charge", id, "id"))?;
        Ok(charge_json(ch, pi, pm))
    }

    pub(super) fn retrieve_payment_method(
        &self,
        st: &mut State,
        _: &mut Ctx<'_>,
        p: &Params,
        ids: &[String],
    ) -> Result<Value, ApiError> {
        allow(p, &["expand"])?;
        let id = first(ids);
        st.methods.get(id).map(|m| payment_method_json(m)).ok_or_else(|| ApiError::no_such("payment_method", id, "id"))
    }
}

/// Stores the payment method a test id or token stands for and returns its `pm_` id.
fn attach(st: &mut State, id: &str, param: &str) -> Result<String, ApiError> {
    if st.methods.contains_key(id) {
        return Ok(id.to_string());
    }
    let (card, fresh) = match cards::lookup(id) {
        // Test ids and tokens become a new PaymentMethod, as in Stripe test mode.
        Some(card) => (card, true),
        // Wallet payment methods from Stripe.js are ordinary pm_ ids: a card that succeeds.
        None if id.starts_with("pm_") && !id.starts_with("pm_card_") => (&cards::DEFAULT_CARD, false),
        None if id.starts_with("tok_") => {
            return Err(ApiError::invalid(format!("No such token: '{id}'"), Some(param), Some("resource_missing")))
        }
        None => {
            return Err(ApiError::invalid(
                format!("No such PaymentMethod: '{id}'"),
                Some(param),
                Some("resource_missing"),
            ))
        }
    };
    let pm_id = if fresh { new_id("pm") } else { id.to_string() };
    let fingerprint = crypto::sha256_hex(format!("{}{}", card.brand, card.last4).as_bytes()).chars().take(16).collect();
    st.methods.insert(pm_id.clone(), Box::new(PaymentMethod { id: pm_id.clone(), card, created: now(), fingerprint }));
    Ok(pm_id)
}

fn matches(pi: &Intent, c: &Clause) -> bool {
    match c {
        Clause::Metadata(k, v) => pi.metadata.get(k) == Some(v),
        Clause::Field(f, v) => match f.as_str() {
            "status" => pi.status.as_str() == v,
            "currency" => pi.currency == *v,
            "customer" => pi.customer.as_deref() == Some(v),
            "amount" => pi.amount.to_string() == *v,
            _ => false,
        },
    }
}

/// Applies `expand[]` to an answer: the ids Stripe can expand in place (`latest_charge` and
/// `payment_method` of a PaymentIntent; `payment_intent` of a charge or refund) become the
/// objects they name. Anything else is refused as Stripe refuses it.
pub(super) fn expand(st: &State, p: &Params, mut v: Value) -> Result<Value, ApiError> {
    let paths = p.list("expand").map_err(|m| ApiError::invalid(m, Some("expand"), None))?.unwrap_or_default();
    for path in paths {
        let kind = v["object"].as_str().unwrap_or_default();
        let id = v[path.as_str()].as_str().map(String::from);
        let object = match (kind, path.as_str(), id) {
            (_, _, None) if v.get(path.as_str()).is_some() => continue,
            ("payment_intent", "latest_charge", Some(id)) => st.charges.get(&id).and_then(|ch| {
                let pi = st.intents.get(&ch.payment_intent)?;
                st.methods.get(&ch.payment_method).map(|pm| charge_json(ch, pi, pm))
            }),
            ("payment_intent", "payment_method", Some(id)) => st.methods.get(&id).map(|m| payment_method_json(m)),
            ("charge" | "refund", "payment_intent", Some(id)) => st.intents.get(&id).map(|i| intent_json(i)),
            _ => {
                return Err(ApiError::invalid(
                    format!("This property cannot be expanded ({path})."),
                    Some("expand"),
                    None,
                ))
            }
        };
        if let Some(o) = object {
            v[path.as_str()] = o;
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attaches_test_ids_as_fresh_payment_methods() {
        let mut st = State::default();
        let a = attach(&mut st, "pm_card_visa", "payment_method").unwrap();
        assert!(a.starts_with("pm_") && a != "pm_card_visa");
        assert_eq!(attach(&mut st, &a, "payment_method").unwrap(), a, "an attached method is reused");
        assert_eq!(attach(&mut st, "pm_1WalletToken", "payment_method").unwrap(), "pm_1WalletToken");
        let e = attach(&mut st, "tok_nope", "x").unwrap_err();
        assert_eq!(e.error["code"], "resource_missing");
        assert!(attach(&mut st, "card_123", "x").is_err());
        let e = attach(&mut st, "pm_card_vias", "payment_method").unwrap_err();
        assert_eq!((e.error["code"].as_str(), e.status), (Some("resource_missing"), 400), "a test card's typo");
    }
}
