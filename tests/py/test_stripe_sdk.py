"""The official stripe-python SDK (16.1.0) against the paymux sandbox's Stripe simulator.

Only `api_base` differs from production use. Environment (set by tests/sandbox_sdk.rs):
STRIPE_API_BASE, STRIPE_API_KEY, STRIPE_WEBHOOK_SECRET, STRIPE_INSTANCE, SANDBOX_CONTROL,
WEBHOOK_DIR (where the test's webhook receiver saves every delivery: path, headers, raw body).
"""
import json
import uuid

import stripe

from harness import control, env, expect_raises, http, run, wait_callback

API_BASE = env("STRIPE_API_BASE")
API_KEY = env("STRIPE_API_KEY")
WHSEC = env("STRIPE_WEBHOOK_SECRET")
INSTANCE = env("STRIPE_INSTANCE")
CONTROL = env("SANDBOX_CONTROL")
WEBHOOK_DIR = env("WEBHOOK_DIR")

stripe.api_key = API_KEY
stripe.api_base = API_BASE
stripe.max_network_retries = 0
stripe.enable_telemetry = False

SHARED = {}


def ref():
    return "att-" + uuid.uuid4().hex[:12]


def paid(amount=1000, currency="hkd", **extra):
    return stripe.PaymentIntent.create(
        amount=amount, currency=currency, payment_method="pm_card_visa", confirm=True, **extra
    )


def authenticating(payment_method):
    """A confirmed HK$20.00 payment whose card asks for 3-D Secure, returning to the shop."""
    return stripe.PaymentIntent.create(
        amount=2000,
        currency="hkd",
        payment_method=payment_method,
        confirm=True,
        return_url="https://shop.example/return",
    )


def test_create_confirm_retrieve_search():
    r = ref()
    pi = stripe.PaymentIntent.create(
        amount=1000,
        currency="hkd",
        payment_method="pm_card_visa",
        confirm=True,
        payment_method_types=["card"],
        metadata={"paymux_attempt": r, "order_id": "o-1"},
        return_url="https://shop.example/r?a=1&b=2",
        idempotency_key=r,
    )
    assert isinstance(pi, stripe.PaymentIntent), type(pi)
    assert pi.status == "succeeded", pi.status
    assert pi.amount_received == 1000 and pi.amount_capturable == 0
    assert pi.payment_method.startswith("pm_") and pi.payment_method != "pm_card_visa", pi.payment_method
    assert pi.latest_charge.startswith("ch_")
    assert pi.next_action is None and pi.last_payment_error is None and pi.canceled_at is None
    assert pi.client_secret.startswith(pi.id + "_secret_")
    assert pi.last_response.request_id.startswith("req_")
    assert pi.last_response.idempotency_key == r
    got = stripe.PaymentIntent.retrieve(pi.id)
    assert got.metadata["order_id"] == "o-1" and got.metadata["paymux_attempt"] == r
    found = stripe.PaymentIntent.search(query=f"metadata['paymux_attempt']:'{r}'")
    assert found.object == "search_result" and [p.id for p in found.data] == [pi.id], found
    assert isinstance(found.data[0], stripe.PaymentIntent)
    assert stripe.PaymentIntent.search(query="metadata['paymux_attempt']:'nope'").data == []
    charge = stripe.Charge.retrieve(pi.latest_charge)
    assert charge.paid and charge.status == "succeeded" and charge.payment_method_details.card.brand == "visa"
    listing = control("GET", f"{CONTROL}/_sandbox/{INSTANCE}/payments")
    assert any(p["id"] == pi.id and p["reference"] == r and p["status"] == "succeeded" for p in listing)
    SHARED["succeeded"] = (pi, r)


def test_idempotent_replay_and_mismatch():
    key = "idem-" + uuid.uuid4().hex
    a = stripe.PaymentIntent.create(
        amount=500, currency="hkd", payment_method="pm_card_mastercard", confirm=True, idempotency_key=key
    )
    b = stripe.PaymentIntent.create(
        amount=500, currency="hkd", payment_method="pm_card_mastercard", confirm=True, idempotency_key=key
    )
    assert a.id == b.id
    assert b.last_response.headers.get("Idempotent-Replayed") == "true"
    assert a.last_response.headers.get("Idempotent-Replayed") is None
    e = expect_raises(
        stripe.IdempotencyError,
        stripe.PaymentIntent.create,
        amount=501,
        currency="hkd",
        payment_method="pm_card_mastercard",
        confirm=True,
        idempotency_key=key,
    )
    assert e.http_status == 400 and e.code is None, (e.http_status, e.code)
    # The same parameters in another order are the same request (Stripe compares parameters).
    form = "amount=500&currency=hkd&payment_method=pm_card_mastercard&confirm=true"
    swapped = "confirm=true&payment_method=pm_card_mastercard&currency=hkd&amount=500"
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "swap-" + uuid.uuid4().hex}
    first = http("POST", f"{API_BASE}/v1/payment_intents", form.encode(), headers)
    again = http("POST", f"{API_BASE}/v1/payment_intents", swapped.encode(), headers)
    assert first[0] == again[0] == 200, (first, again)
    assert json.loads(first[2])["id"] == json.loads(again[2])["id"]


def test_declines_raise_card_error_with_payment_intent():
    cases = [
        ("pm_card_visa_chargeDeclinedInsufficientFunds", "card_declined", "insufficient_funds"),
        ("pm_card_chargeDeclined", "card_declined", "generic_decline"),
        ("pm_card_visa_chargeDeclinedLostCard", "card_declined", "lost_card"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", "expired_card"),
        ("pm_card_visa_chargeDeclinedVelocityLimitExceeded", "card_declined", "card_velocity_exceeded"),
        ("pm_card_chargeCustomerFail", "card_declined", "generic_decline"),
        # Blocked by Radar (always; and at the highest risk level, by its default rule).
        ("pm_card_radarBlock", "card_declined", "fraudulent"),
        ("pm_card_riskLevelHighest", "card_declined", "fraudulent"),
    ]
    for pm, code, decline in cases:
        e = expect_raises(
            stripe.CardError, stripe.PaymentIntent.create, amount=1000, currency="hkd", payment_method=pm, confirm=True
        )
        assert e.http_status == 402 and e.code == code, (pm, e.http_status, e.code)
        assert e.error.decline_code == decline, (pm, e.error.decline_code)
        assert e.request_id and e.request_id.startswith("req_")
        pi = e.error.payment_intent
        assert isinstance(pi, stripe.PaymentIntent), type(pi)
        assert pi.status == "requires_payment_method"
        assert pi.last_payment_error.decline_code == decline
        assert stripe.PaymentIntent.retrieve(pi.id).status == "requires_payment_method"


def test_tokens_and_wallet_payment_methods():
    pi = stripe.PaymentIntent.create(
        amount=700, currency="usd", confirm=True, payment_method_data={"type": "card", "card": {"token": "tok_visa"}}
    )
    assert pi.status == "succeeded"
    wallet = stripe.PaymentIntent.create(amount=700, currency="hkd", confirm=True, payment_method="pm_1WalletFromJs")
    assert wallet.status == "succeeded" and wallet.payment_method == "pm_1WalletFromJs"
    e = expect_raises(
        stripe.InvalidRequestError,
        stripe.PaymentIntent.create,
        amount=700,
        currency="hkd",
        confirm=True,
        payment_method_data={"type": "card", "card": {"token": "tok_unknown"}},
    )
    assert e.code == "resource_missing"
    # A misspelt test card is no card at all, as at Stripe (not a wallet method that succeeds).
    e = expect_raises(
        stripe.InvalidRequestError,
        stripe.PaymentIntent.create,
        amount=700,
        currency="hkd",
        confirm=True,
        payment_method="pm_card_vias",
    )
    assert e.code == "resource_missing" and e.param == "payment_method", (e.code, e.param)


def test_a_payment_needing_authentication_fails_when_the_payer_is_away():
    for flag in ({"off_session": True}, {"error_on_requires_action": True}):
        e = expect_raises(
            stripe.CardError,
            stripe.PaymentIntent.create,
            amount=2000,
            currency="hkd",
            payment_method="pm_card_authenticationRequired",
            confirm=True,
            **flag,
        )
        assert e.http_status == 402 and e.code == "authentication_required", (flag, e.http_status, e.code)
        assert e.error.decline_code == "authentication_required"
        assert e.error.payment_intent.status == "requires_payment_method"
    e = expect_raises(
        stripe.InvalidRequestError,
        stripe.PaymentIntent.create,
        amount=2000,
        currency="hkd",
        payment_method="pm_card_visa",
        off_session=True,
    )
    assert e.param == "off_session", e.param
    # Authenticated, then declined by the issuer.
    pi = authenticating("pm_card_authenticationRequiredChargeDeclinedInsufficientFunds")
    assert pi.status == "requires_action", pi.status
    control("POST", f"{CONTROL}/_sandbox/{INSTANCE}/payment_intents/{pi.id}/authenticate")
    after = stripe.PaymentIntent.retrieve(pi.id)
    assert after.status == "requires_payment_method", after.status
    assert after.last_payment_error.decline_code == "insufficient_funds"


def test_lists_page_both_ways_and_filter():
    customer = "cus_" + uuid.uuid4().hex[:14]
    made = [paid(amount=1000 + i, customer=customer).id for i in range(5)]  # oldest first
    newest_first = list(reversed(made))
    page = stripe.PaymentIntent.list(customer=customer, limit=2)
    assert [p.id for p in page.data] == newest_first[:2] and page.has_more
    assert [p.id for p in page.auto_paging_iter()] == newest_first
    # Backward from the oldest: the SDK follows `ending_before` page by page, and stops.
    back = stripe.PaymentIntent.list(customer=customer, limit=2, ending_before=made[0])
    assert [p.id for p in back.auto_paging_iter()] == made[1:]
    empty = stripe.PaymentIntent.list(customer=customer, ending_before=made[-1])
    assert empty.data == [] and not empty.has_more
    later = stripe.PaymentIntent.list(customer=customer, created={"gt": page.data[0].created + 1000})
    assert later.data == []
    assert len(stripe.PaymentIntent.list(customer=customer, created={"lte": page.data[0].created}).data) == 5
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.list, starting_after="pi_nope")
    assert e.code == "resource_missing" and e.param == "starting_after", (e.code, e.param)
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.list, starting_after=made[1], ending_before=made[3])
    assert e.http_status == 400


def test_three_d_secure_requires_action_then_completes():
    pi = authenticating("pm_card_threeDSecure2Required")
    assert pi.status == "requires_action", pi.status
    assert pi.next_action.type == "redirect_to_url"
    url = pi.next_action.redirect_to_url.url
    assert url.startswith(API_BASE + "/pay/"), url
    assert pi.next_action.redirect_to_url.return_url == "https://shop.example/return"
    status, _, page = http("GET", url)
    assert status == 200 and "Complete authentication" in page, page[:200]
    done = control("POST", f"{CONTROL}/_sandbox/{INSTANCE}/payment_intents/{pi.id}/authenticate")
    assert done["status"] == "succeeded", done["status"]
    again = stripe.PaymentIntent.retrieve(pi.id)
    assert again.status == "succeeded" and again.next_action is None

    # The payer fails the challenge on the page: redirected back with redirect_status=failed.
    pi2 = authenticating("pm_card_authenticationRequired")
    status, headers, _ = http("POST", f"{API_BASE}/pay/{pi2.id}/fail", b"")
    assert status == 303, status
    location = headers.get("Location") or headers.get("location")
    assert location.startswith("https://shop.example/return?payment_intent=" + pi2.id), location
    assert "redirect_status=failed" in location
    failed = stripe.PaymentIntent.retrieve(pi2.id)
    assert failed.status == "requires_payment_method"
    assert failed.last_payment_error.code == "payment_intent_authentication_failure"


def test_modify_then_confirm():
    pi = stripe.PaymentIntent.create(amount=500, currency="hkd", metadata={"a": "1", "b": "2"})
    assert pi.status == "requires_payment_method"
    m = stripe.PaymentIntent.modify(
        pi.id, amount=900, payment_method="pm_card_visa", metadata={"a": "", "c": "3"}, description="upd"
    )
    assert m.amount == 900 and m.status == "requires_confirmation" and m.description == "upd", m
    assert m.metadata.to_dict() == {"b": "2", "c": "3"}, m.metadata
    done = stripe.PaymentIntent.confirm(pi.id)
    assert done.status == "succeeded" and done.amount_received == 900, done
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.modify, pi.id, amount=100)
    assert e.code == "payment_intent_unexpected_state" and "status of succeeded" in str(e), e
    noted = stripe.PaymentIntent.modify(pi.id, metadata={"note": "shipped"})
    assert noted.metadata["note"] == "shipped" and noted.amount == 900
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.modify, pi.id, colour="red")
    assert e.param == "colour", e.param
    x = stripe.PaymentIntent.retrieve(pi.id, expand=["latest_charge", "payment_method"])
    assert isinstance(x.latest_charge, stripe.Charge) and x.latest_charge.amount == 900, x.latest_charge
    assert isinstance(x.payment_method, stripe.PaymentMethod) and x.payment_method.card.last4 == "4242"
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.retrieve, pi.id, expand=["customer.nope"])
    assert e.param == "expand", e.param


def test_cancel():
    pi = stripe.PaymentIntent.create(amount=450, currency="hkd")
    assert pi.status == "requires_payment_method"
    c = stripe.PaymentIntent.cancel(pi.id, cancellation_reason="requested_by_customer")
    assert c.status == "canceled" and c.canceled_at and c.cancellation_reason == "requested_by_customer"
    done = paid()
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.cancel, done.id)
    assert e.code == "payment_intent_unexpected_state", e.code


def test_manual_capture():
    pi = paid(capture_method="manual")
    assert pi.status == "requires_capture" and pi.amount_capturable == 1000 and pi.amount_received == 0
    captured = stripe.PaymentIntent.capture(pi.id, amount_to_capture=800)
    assert captured.status == "succeeded" and captured.amount_received == 800
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.capture, pi.id)
    assert e.code == "payment_intent_unexpected_state"
    # The 200 not captured is released: the charge shows it refunded.
    ch = stripe.Charge.retrieve(captured.latest_charge)
    assert (ch.captured, ch.amount_captured, ch.amount_refunded, ch.refunded) == (True, 800, 200, False), ch
    # An authorisation canceled is released in full.
    held = paid(capture_method="manual")
    stripe.PaymentIntent.cancel(held.id)
    ch = stripe.Charge.retrieve(held.latest_charge)
    assert (ch.captured, ch.amount_refunded, ch.refunded) == (False, 1000, True), ch
    SHARED["captured"] = captured


def test_refunds_partial_over_and_full():
    pi = paid()
    r1 = stripe.Refund.create(
        payment_intent=pi.id, amount=400, reason="requested_by_customer", metadata={"paymux_refund": "rf-1"}
    )
    assert isinstance(r1, stripe.Refund) and r1.status == "succeeded" and r1.amount == 400
    assert r1.charge == pi.latest_charge and r1.payment_intent == pi.id
    assert stripe.Refund.retrieve(r1.id).metadata["paymux_refund"] == "rf-1"
    e = expect_raises(stripe.InvalidRequestError, stripe.Refund.create, payment_intent=pi.id, amount=700)
    assert e.code == "amount_too_large" and e.param == "amount", (e.code, e.param)
    r2 = stripe.Refund.create(payment_intent=pi.id)
    assert r2.amount == 600
    e = expect_raises(stripe.InvalidRequestError, stripe.Refund.create, payment_intent=pi.id, amount=1)
    assert e.code == "charge_already_refunded", e.code
    charge = stripe.Charge.retrieve(pi.latest_charge)
    assert charge.refunded and charge.amount_refunded == 1000
    noted = stripe.Refund.modify(r1.id, metadata={"note": "customer called"})
    assert noted.metadata.to_dict() == {"paymux_refund": "rf-1", "note": "customer called"}, noted.metadata
    e = expect_raises(stripe.InvalidRequestError, stripe.Refund.modify, r1.id, amount=1)
    assert e.code == "parameter_unknown" and e.param == "amount", (e.code, e.param)
    assert [r.id for r in stripe.Refund.list(charge=pi.latest_charge).data] == [r2.id, r1.id]
    charges = stripe.Charge.list(payment_intent=pi.id)
    assert [c.id for c in charges.data] == [pi.latest_charge] and not charges.has_more, charges
    unpaid = stripe.PaymentIntent.create(amount=450, currency="hkd")
    expect_raises(stripe.InvalidRequestError, stripe.Refund.create, payment_intent=unpaid.id)
    SHARED["refunded"] = pi


def test_validation_auth_and_not_found():
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.create, amount=-1, currency="hkd")
    assert e.param == "amount", e.param
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.create, amount=100, currency="xyz")
    assert e.param == "currency"
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.create, currency="hkd")
    assert e.code == "parameter_missing" and e.param == "amount"
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.create, amount=399, currency="hkd")
    assert e.code == "amount_too_small" and e.param == "amount", (e.code, e.param)
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.create, amount=100, currency="hkd", bogus="x")
    assert e.code == "parameter_unknown"
    e = expect_raises(stripe.InvalidRequestError, stripe.PaymentIntent.retrieve, "pi_does_not_exist")
    assert e.http_status == 404 and e.code == "resource_missing"
    e = expect_raises(stripe.AuthenticationError, stripe.PaymentIntent.retrieve, "pi_x", api_key="sk_test_wrong")
    assert e.http_status == 401 and e.error.code == "api_key_invalid", e.error


def test_stripe_client_form():
    client = stripe.StripeClient(API_KEY, base_addresses={"api": API_BASE})
    pi = client.v1.payment_intents.create(
        params={"amount": 1234, "currency": "hkd", "payment_method": "pm_card_unionpay", "confirm": True},
        options={"idempotency_key": "client-" + uuid.uuid4().hex},
    )
    assert pi.status == "succeeded"
    assert client.v1.payment_intents.retrieve(pi.id).amount == 1234


def test_webhooks_delivered_and_verified_by_the_sdk():
    pi, r = SHARED["succeeded"]
    cb = wait_callback(
        WEBHOOK_DIR,
        lambda b: b.get("type") == "payment_intent.succeeded" and b["data"]["object"]["id"] == pi.id,
        f"payment_intent.succeeded for {pi.id}",
    )
    assert cb["path"] == f"/v1/webhooks/{INSTANCE}", cb["path"]
    assert cb["headers"]["content-type"] == "application/json; charset=utf-8"
    sig = cb["headers"]["stripe-signature"]
    event = stripe.Webhook.construct_event(cb["body"], sig, WHSEC)
    assert isinstance(event, stripe.Event) and event.type == "payment_intent.succeeded"
    assert isinstance(event.data.object, stripe.PaymentIntent)
    assert event.data.object.metadata["paymux_attempt"] == r
    assert event.request.idempotency_key == r and event.request.id.startswith("req_")
    assert event.api_version == stripe.api_version and event.livemode is False
    expect_raises(stripe.SignatureVerificationError, stripe.Webhook.construct_event, cb["body"] + " ", sig, WHSEC)
    expect_raises(stripe.SignatureVerificationError, stripe.Webhook.construct_event, cb["body"], sig, "whsec_other")

    refunded = SHARED["refunded"]
    for kind in ("refund.created", "charge.refunded", "refund.updated"):
        cb = wait_callback(
            WEBHOOK_DIR,
            lambda b, kind=kind: b.get("type") == kind
            and refunded.id in (b["data"]["object"].get("payment_intent"), b["data"]["object"].get("id")),
            f"{kind} for {refunded.id}",
        )
        ev = stripe.Webhook.construct_event(cb["body"], cb["headers"]["stripe-signature"], WHSEC)
        assert ev.type == kind
    # The charge's own events, as Stripe sends them beside the PaymentIntent's.
    for kind, obj in (("payment_intent.created", pi.id), ("charge.succeeded", pi.latest_charge),
                      ("charge.captured", SHARED["captured"].latest_charge)):
        cb = wait_callback(
            WEBHOOK_DIR,
            lambda b, kind=kind, obj=obj: b.get("type") == kind and b["data"]["object"]["id"] == obj,
            f"{kind} for {obj}",
        )
        assert stripe.Webhook.construct_event(cb["body"], cb["headers"]["stripe-signature"], WHSEC).type == kind
    cb = wait_callback(WEBHOOK_DIR, lambda b: b.get("type") == "charge.failed", "charge.failed")
    assert json.loads(cb["body"])["data"]["object"]["status"] == "failed"
    failed = wait_callback(WEBHOOK_DIR, lambda b: b.get("type") == "payment_intent.payment_failed", "payment_failed")
    body = json.loads(failed["body"])
    assert body["data"]["object"]["last_payment_error"]["type"] in ("card_error", "invalid_request_error")


if __name__ == "__main__":
    run(globals())
