//! User story 4: stop, slow down or break the primary channel's simulator and payments go to
//! the backup, and no payment is ever charged on two channels.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

async fn pay(w: &World, order: &str) -> Resp {
    let r = create(&w.pm.api, &format!("idem-{order}"), card(order, 4200)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r
}

fn outcomes(r: &Resp) -> Vec<String> {
    r.body["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}:{}", a["channel"].as_str().unwrap(), a["outcome"].as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_fails_over_to_backup() {
    let w = world(1000).await;
    w.fault("stripe_primary", json!({"down": true})).await;
    let r = pay(&w, "refused").await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    assert_eq!(r.body["channel"], "stripe_backup");
    assert_eq!(outcomes(&r), ["stripe_primary:not_sent", "stripe_backup:accepted"]);
    assert_eq!(w.charged("stripe_primary").await, 0);
    assert_eq!(w.charged("stripe_backup").await, 1);
    let m = w.metrics().await;
    assert_eq!(
        metric(&m, "paymux_failovers_total", "from=\"stripe_primary\",reason=\"connect_failed\",to=\"stripe_backup\""),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_primary_fails_over() {
    let w = world(1000).await;
    w.fault("stripe_primary", json!({"error_rate_pct": 100, "error_status": 429})).await;
    let r = pay(&w, "429").await;
    assert_eq!(r.body["channel"], "stripe_backup", "{}", r.text);
    assert_eq!(outcomes(&r), ["stripe_primary:not_processed", "stripe_backup:accepted"]);
    assert_eq!(w.charged("stripe_primary").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_after_processing_is_adopted_not_retried_elsewhere() {
    let w = world(1000).await;
    w.fault(
        "stripe_primary",
        json!({"error_rate_pct": 100, "error_status": 500, "process_before_error": true, "ops": ["create"]}),
    )
    .await;
    let r = pay(&w, "5xx-processed").await;
    assert_eq!(r.body["status"], "succeeded", "{}", r.text);
    assert_eq!(r.body["channel"], "stripe_primary");
    assert_eq!(outcomes(&r), ["stripe_primary:accepted_after_query"]);
    assert_eq!(w.charged("stripe_primary").await, 1);
    assert_eq!(w.charged("stripe_backup").await, 0, "charged twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_without_processing_fails_over_after_query() {
    let w = world(1000).await;
    w.fault("stripe_primary", json!({"error_rate_pct": 100, "error_status": 503, "ops": ["create"]})).await;
    let r = pay(&w, "5xx").await;
    assert_eq!(r.body["channel"], "stripe_backup", "{}", r.text);
    assert_eq!(outcomes(&r), ["stripe_primary:not_found_after_query", "stripe_backup:accepted"]);
    assert_eq!(w.charged("stripe_primary").await, 0);
    assert_eq!(w.charged("stripe_backup").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_create_times_out_then_query_then_backup() {
    let w = world(500).await;
    w.fault("stripe_primary", json!({"blackhole": true, "ops": ["create"]})).await;
    let t = std::time::Instant::now();
    let r = pay(&w, "blackhole").await;
    assert_eq!(r.body["channel"], "stripe_backup", "{}", r.text);
    assert_eq!(outcomes(&r), ["stripe_primary:not_found_after_query", "stripe_backup:accepted"]);
    assert!(t.elapsed() >= Duration::from_millis(500), "the per-attempt timeout must apply");
    assert_eq!(w.charged("stripe_primary").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_payment_whose_answer_was_lost_asks_the_provider_first() {
    let w = world(3000).await;
    w.fault("stripe_primary", json!({"error_rate_pct": 100, "error_status": 500, "ops": ["create", "query"]})).await;
    let r = pay(&w, "lost-answer").await;
    assert_eq!(r.body["status"], "processing", "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    // The provider's id is unknown: no cancel naming no payment is sent; the app is told to
    // retry while paymux finds out.
    let c = post(&w.pm.api, &format!("/v1/payments/{id}/cancel"), None, json!({})).await;
    assert_eq!(c.status, 409, "{}", c.text);
    assert_eq!(c.body["code"], "payment_outcome_unknown", "{}", c.text);
    assert_eq!(get(&w.pm.api, &format!("/v1/payments/{id}")).await.body["status"], "processing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_an_attempt_whose_provider_object_is_unknown_must_state_the_payments_amount() {
    let w = world(3000).await;
    let fault =
        json!({"error_rate_pct": 100, "error_status": 500, "ops": ["create", "query"], "callbacks": {"drop": true}});
    w.fault("stripe_primary", fault).await;
    let r = pay(&w, "unknown-object").await;
    assert_eq!(r.body["status"], "processing", "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let url = format!("{}/v1/webhooks/stripe_primary", w.pm.api);
    let event = |evt: &str, pi: &str, amount: i64| {
        json!({"id": evt, "object": "event", "type": "payment_intent.succeeded", "data": {"object": {"id": pi, "object": "payment_intent", "status": "succeeded", "amount": amount, "currency": "hkd", "metadata": {"paymux_attempt": format!("{id}-a1")}}}}).to_string()
    };
    // Signed and naming our attempt, but for another amount: about some other PaymentIntent
    // that carries our reference (the attempt does not know its own, its answer was lost).
    let other = send(stripe_event(&url, &event("evt_other", "pi_other", 400))).await;
    assert_eq!(other.status, 200, "{}", other.text);
    assert_eq!(get(&w.pm.api, &format!("/v1/payments/{id}")).await.body["status"], "processing");
    let m = w.metrics().await;
    assert_eq!(metric(&m, "paymux_webhooks_total", r#"channel="stripe_primary",outcome="unmatched""#), 1.0, "{m}");
    // The provider's word about our payment (its amount) settles it.
    let ours = send(stripe_event(&url, &event("evt_ours", "pi_ours", 4200))).await;
    assert_eq!(ours.status, 200, "{}", ours.text);
    let g = get(&w.pm.api, &format!("/v1/payments/{id}")).await;
    assert_eq!(g.body["status"], "succeeded", "{}", g.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fully_blackholed_channel_leaves_payment_processing_for_the_reconciler() {
    let w = world(400).await;
    w.fault("stripe_primary", json!({"blackhole": true})).await;
    let r = pay(&w, "blackhole-all").await;
    assert_eq!(r.body["status"], "processing", "{}", r.text);
    assert_eq!(r.body["channel"], "stripe_primary");
    assert_eq!(outcomes(&r), ["stripe_primary:unknown"]);
    assert_eq!(w.charged("stripe_backup").await, 0, "never try the backup while the outcome is unknown");
    // The primary recovers; the reconciler learns it never processed the payment.
    w.clear("stripe_primary").await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let settled = eventually(Duration::from_secs(15), || async {
        let g = get(&w.pm.api, &format!("/v1/payments/{id}")).await;
        g.body["status"] == "failed"
    })
    .await;
    assert!(settled, "reconciler did not settle the payment");
    assert_eq!(w.charged("stripe_primary").await + w.charged("stripe_backup").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_primary_that_processes_late_is_reversed() {
    // The primary receives the payment but answers after paymux's timeout and shows nothing to
    // the status query until it finishes. paymux moves to the backup; when the primary's late
    // charge appears, the reconciler refunds it, so the payer ends up charged once.
    let w = world(400).await;
    w.fault("stripe_primary", json!({"latency_ms": 1500, "ops": ["create"]})).await;
    let r = pay(&w, "late").await;
    assert_eq!(r.body["channel"], "stripe_backup", "{}", r.text);
    w.clear("stripe_primary").await;
    let reversed = eventually(Duration::from_secs(20), || async {
        let ps = w.sim_payments("stripe_primary").await;
        ps.iter().any(|p| {
            p["amount_refunded"].as_i64() == Some(4200)
                || p["refunded"].as_i64() == Some(4200)
                || p["status"] == "canceled"
        })
    })
    .await;
    // The simulator shows the reversal as soon as it answers; paymux counts it once it has
    // that answer, a moment later.
    let counted = eventually(Duration::from_secs(5), || async {
        metric(&w.metrics().await, "paymux_orphan_reversals_total", "result=\"reversed\"") >= 1.0
    })
    .await;
    let m = w.metrics().await;
    assert!(reversed, "late charge on the primary was not reversed; metrics:\n{m}");
    assert!(counted, "the reversal was not counted; metrics:\n{m}");
    assert_eq!(metric(&m, "paymux_orphan_reversals_total", "result=\"reversed\""), 1.0);
    // A late (or repeated) callback about the reversed charge does not queue it again.
    let pi = w.sim_payments("stripe_primary").await[0]["id"].as_str().unwrap().to_string();
    let aref = format!("{}-a1", r.body["id"].as_str().unwrap());
    let ev = json!({"id": "evt_late_orphan", "object": "event", "type": "payment_intent.succeeded", "created": 1,
        "data": {"object": {"id": pi, "object": "payment_intent", "status": "succeeded", "amount": 4200,
        "currency": "hkd", "metadata": {"paymux_attempt": aref}}}});
    let late = send(stripe_event(&format!("{}/v1/webhooks/stripe_primary", w.pm.api), &ev.to_string())).await;
    assert_eq!(late.status, 200, "{}", late.text);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = w.metrics().await;
    assert_eq!(metric(&m, "paymux_orphan_reversals_total", "result=\"reversed\""), 1.0, "reversed again:\n{m}");
    let attempts = get(&w.pm.api, &format!("/v1/payments/{}", r.body["id"].as_str().unwrap())).await;
    assert_eq!(attempts.body["attempts"][0]["outcome"], "reversed", "{}", attempts.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_failed_for_want_of_a_record_is_corrected_when_the_charge_lands_late() {
    // The only channel holding the payment answers neither the create nor the status query
    // in time, and charges 12 s late with its callback lost; meanwhile its search shows
    // nothing, so the reconciler fails the payment (once the create could no longer be on its
    // way: 7 s after it was sent). It must still learn of the charge.
    let w = world(3000).await;
    w.fault(
        "stripe_primary",
        json!({"latency_ms": 12000, "ops": ["create", "query"], "times": 2, "callbacks": {"drop": true}}),
    )
    .await;
    w.fault("stripe_backup", json!({"down": true})).await;
    let r = pay(&w, "late-charge").await;
    assert_eq!(r.body["status"], "processing", "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    let failed = reaches(&w.pm.api, &format!("/v1/payments/{id}"), "failed", 6).await;
    assert!(failed, "{}", get(&w.pm.api, &format!("/v1/payments/{id}")).await.text);
    let corrected = reaches(&w.pm.api, &format!("/v1/payments/{id}"), "succeeded", 30).await;
    assert_eq!(w.charged("stripe_primary").await, 1);
    assert!(
        corrected,
        "charged at the provider, failed at paymux: {}",
        get(&w.pm.api, &format!("/v1/payments/{id}")).await.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_antom_payment_found_after_an_ambiguous_create_still_tells_the_payer_where_to_pay() {
    let w = world(3000).await;
    // Antom takes the payment, then answers 500 (once): paymux must query before anything
    // else. Antom's inquiry has no redirect URL; the unchanged create, sent again under the
    // same paymentRequestId, returns the payment Antom holds, with its URLs.
    w.fault(
        "antom_hk",
        json!({"error_rate_pct": 100, "error_status": 500, "process_before_error": true, "ops": ["create"], "times": 1}),
    )
    .await;
    let body = json!({"amount": 4444, "currency": "HKD", "method": "alipay_hk", "order_id": "o-amb", "return_url": "https://s/r"});
    let r = create(&w.pm.api, "antom-amb", body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(outcomes(&r), ["antom_hk:accepted_after_query"], "{}", r.text);
    assert_eq!(r.body["status"], "requires_action", "{}", r.text);
    assert_eq!(r.body["next_action"]["type"], "redirect", "{}", r.text);
    assert!(r.body["next_action"]["url"].as_str().unwrap_or("").contains("/pay/"), "{}", r.text);
    assert_eq!(w.sim_payments("antom_hk").await.len(), 1, "created once");
    // The control API shows the one-off fault spent.
    let f = send(client().get(format!("{}/_sandbox/faults", w.ctrl))).await;
    assert_eq!(
        (f.body["antom_hk"]["times"].as_u64(), f.body["antom_hk"]["times_used"].as_u64()),
        (Some(1), Some(1)),
        "{}",
        f.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_fetches_the_payer_action_an_antom_outage_withheld_from_the_first_answer() {
    let w = world(3000).await;
    // Antom takes the payment but both the create's answer and the one sent again to fetch
    // the redirect are lost: the first answer has no next_action.
    w.fault(
        "antom_hk",
        json!({"error_rate_pct": 100, "error_status": 503, "process_before_error": true, "ops": ["create"], "times": 2}),
    )
    .await;
    let body = json!({"amount": 4545, "currency": "HKD", "method": "alipay_hk", "order_id": "o-lost", "return_url": "https://s/r"});
    let r = create(&w.pm.api, "antom-lost", body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "requires_action", "{}", r.text);
    assert!(r.body["next_action"].is_null(), "{}", r.text);
    // The outage over, the app retries with the same key: it gets the redirect, and the
    // payer pays the one payment Antom holds.
    let again = create(&w.pm.api, "antom-lost", body.clone()).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["id"], r.body["id"]);
    assert_eq!(again.body["next_action"]["type"], "redirect", "{}", again.text);
    assert_eq!(w.sim_payments("antom_hk").await.len(), 1, "created once");
    // Unchanged since: the same payment, status and action.
    let third = create(&w.pm.api, "antom-lost", body).await;
    for k in ["id", "status", "next_action"] {
        assert_eq!(third.body[k], again.body[k], "{k}: {}", third.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_whose_database_is_gone_is_refused_not_started_afresh() {
    let mut w = world(3000).await;
    pay(&w, "lost-db").await;
    w.pm.kill9();
    // Its exit status and stderr; a paymux still serving after 20 s is killed and fails.
    let serve = |w: &World| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_paymux"))
            .args(["serve", "--config"])
            .arg(w.tmp.path().join("cfg"))
            .arg("--data-dir")
            .arg(&w.pm.data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("paymux started on a data directory whose database is gone");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    };
    // Deleted, then emptied: started afresh, a retried key would be a new payment.
    for f in ["paymux.db", "paymux.db-wal", "paymux.db-shm"] {
        let _ = std::fs::remove_file(w.pm.data.join(f));
    }
    for _ in 0..2 {
        let out = serve(&w);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("paymux.db is missing or empty"), "{err}");
        std::fs::write(w.pm.data.join("paymux.db"), b"").unwrap();
    }
}

/// Waits (up to 5 s) until the store in `data` shows an attempt being sent.
async fn an_attempt_goes_out(data: &std::path::Path) -> bool {
    let db = data.join("paymux.db");
    eventually(Duration::from_secs(5), || {
        let db = db.clone();
        async move {
            rusqlite::Connection::open(&db)
                .and_then(|c| {
                    c.query_row("SELECT COUNT(*) FROM attempts WHERE outcome = 'pending'", [], |r| r.get::<_, i64>(0))
                })
                .is_ok_and(|n| n > 0)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_crash_mid_create_is_answered_at_once_and_charges_once() {
    let mut w = world(3000).await;
    w.fault("stripe_primary", json!({"blackhole": true, "process_before_error": true, "ops": ["create"]})).await;
    let api = w.pm.api.clone();
    let first = tokio::spawn(async move { create(&api, "crash-key", card("o-crash", 4200)).await });
    assert!(an_attempt_goes_out(&w.pm.data).await);
    w.pm.kill9();
    let _ = first.await;
    w.clear("stripe_primary").await;
    w.restart();
    // The claim belongs to the process that died: no 409 "still in use" until it times out.
    let again = create(&w.pm.api, "crash-key", card("o-crash", 4200)).await;
    assert_eq!(again.status, 200, "{}", again.text);
    let id = again.body["id"].as_str().unwrap().to_string();
    let settled = reaches(&w.pm.api, &format!("/v1/payments/{id}"), "succeeded", 10).await;
    assert!(settled, "log:\n{}", w.pm.log());
    assert_eq!(w.charged("stripe_primary").await + w.charged("stripe_backup").await, 1);
    // The attempt the crash left unknown agrees with the payment once the provider answered.
    let g = get(&w.pm.api, &format!("/v1/payments/{id}")).await;
    assert_eq!(outcomes(&g), ["stripe_primary:accepted_after_query"], "{}", g.text);
    assert_eq!(g.body["attempts"][0]["error_code"], "interrupted", "{}", g.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_crash_mid_antom_create_still_tells_the_payer_where_to_pay() {
    let mut w = world(3000).await;
    // Antom takes the payment and never answers; paymux is killed while waiting. After the
    // restart only a status query is possible, and Antom's has no redirect URL: the retry
    // (same key, same request) must still come back with one, from the unchanged create sent
    // again under the attempt's paymentRequestId, and nothing may be created twice.
    w.fault("antom_hk", json!({"blackhole": true, "process_before_error": true, "ops": ["create"]})).await;
    let body = json!({"amount": 5150, "currency": "HKD", "method": "alipay_hk", "order_id": "o-crash-ahk",
                      "return_url": "https://shop.example/back", "payment_method_data": {"terminal_type": "WAP", "os_type": "IOS"}});
    let (api, b) = (w.pm.api.clone(), body.clone());
    let first = tokio::spawn(async move { create(&api, "crash-ahk", b).await });
    assert!(an_attempt_goes_out(&w.pm.data).await);
    let held = eventually(Duration::from_secs(5), || async { w.sim_payments("antom_hk").await.len() == 1 }).await;
    assert!(held, "the simulator never took the payment");
    w.pm.kill9();
    let _ = first.await;
    // Antom cannot be asked yet: the retry is told what is known (processing), and that
    // answer is not kept as the key's, so the next retry looks again.
    w.fault("antom_hk", json!({"error_rate_pct": 100, "error_status": 500, "ops": ["query"]})).await;
    w.restart();
    let early = create(&w.pm.api, "crash-ahk", body.clone()).await;
    assert_eq!(early.status, 200, "{}", early.text);
    assert_eq!(early.body["status"], "processing", "{}", early.text);
    assert!(early.body["next_action"].is_null(), "{}", early.text);
    w.clear("antom_hk").await;
    let again = create(&w.pm.api, "crash-ahk", body.clone()).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["status"], "requires_action", "{}", again.text);
    assert_eq!(again.body["next_action"]["type"], "redirect", "{}", again.text);
    let url = again.body["next_action"]["url"].as_str().unwrap_or("").to_string();
    assert!(url.contains("/pay/"), "{}", again.text);
    assert_eq!(w.sim_payments("antom_hk").await.len(), 1, "created once");
    // Stored: a later replay and a read say the same.
    let replay = create(&w.pm.api, "crash-ahk", body).await;
    assert_eq!(replay.body["next_action"]["url"], url.as_str(), "{}", replay.text);
    let id = again.body["id"].as_str().unwrap();
    let g = get(&w.pm.api, &format!("/v1/payments/{id}")).await;
    assert_eq!(g.body["next_action"]["url"], url.as_str(), "{}", g.text);
    assert_eq!(outcomes(&g), ["antom_hk:accepted_after_query"], "{}", g.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_landing_after_a_crash_is_not_failed_for_being_absent_when_first_asked() {
    let mut w = world(3000).await;
    // Antom is slow (2.5 s) with this create; paymux is killed 0.1-0.3 s into the wait and
    // restarted at once. Its first status query finds nothing; the create lands a moment
    // later and Antom holds the payment open for the payer.
    w.fault("antom_hk", json!({"latency_ms": 2500, "ops": ["create"], "times": 1})).await;
    let body = json!({"amount": 7777, "currency": "HKD", "method": "alipay_hk", "order_id": "o-late-ahk", "return_url": "https://shop.example/back"});
    let (api, b) = (w.pm.api.clone(), body.clone());
    let first = tokio::spawn(async move { create(&api, "late-ahk", b).await });
    assert!(an_attempt_goes_out(&w.pm.data).await);
    w.pm.kill9();
    let _ = first.await;
    w.restart();
    // The app retries once a second: never told `failed`, and told where to pay once Antom
    // has the payment.
    let mut seen = Vec::new();
    let t = Instant::now();
    let url = loop {
        let r = create(&w.pm.api, "late-ahk", body.clone()).await;
        seen.push(r.body["status"].as_str().unwrap_or("").to_string());
        if let Some(url) = r.body["next_action"]["url"].as_str() {
            break url.to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(15), "no redirect; answers {seen:?}; log:\n{}", w.pm.log());
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(!seen.iter().any(|s| s == "failed"), "{seen:?}");
    assert!(url.contains("/pay/"), "{url}");
    assert_eq!(w.sim_payments("antom_hk").await.len(), 1, "created once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_cut_off_by_a_crash_is_settled_with_what_the_provider_made_of_it() {
    let mut w = world(3000).await;
    let body = json!({"amount": 6100, "currency": "HKD", "method": "alipay_hk", "order_id": "o-crash-cancel", "return_url": "https://s/r"});
    let id = create(&w.pm.api, "crash-cancel", body).await.body["id"].as_str().unwrap().to_string();
    // The payer pays; the app cancels: Antom cancels the paid payment (refunding the payer)
    // and never answers. The notify of the payment reaches paymux while the cancel is out,
    // and paymux is killed while waiting: after the restart it holds the payment succeeded.
    w.fault("antom_hk", json!({"blackhole": true, "process_before_error": true, "ops": ["cancel"], "times": 1, "callbacks": {"delay_ms": 300}})).await;
    let pay_id = w.sim_payments("antom_hk").await[0]["id"].as_str().unwrap().to_string();
    let a = send(client().post(format!("{}/_sandbox/antom_hk/payments/{pay_id}/approve", w.ctrl))).await;
    assert!(a.status < 300, "{}", a.text);
    let (api, pid) = (w.pm.api.clone(), id.clone());
    let cancel = tokio::spawn(async move { post(&api, &format!("/v1/payments/{pid}/cancel"), None, json!({})).await });
    let notified = eventually(Duration::from_secs(5), || async {
        metric(&w.metrics().await, "paymux_webhooks_total", r#"channel="antom_hk",outcome="applied""#) >= 1.0
    })
    .await;
    assert!(notified, "{}", w.metrics().await);
    assert_eq!(w.sim_payments("antom_hk").await[0]["status"], "CANCELLED");
    w.pm.kill9();
    let _ = cancel.await;
    w.restart();
    // The reconciler asks Antom about the cancel paymux never heard back from, and the
    // payment ends as Antom has it.
    let settled = reaches(&w.pm.api, &format!("/v1/payments/{id}"), "canceled", 20).await;
    assert!(settled, "{}; log:\n{}", get(&w.pm.api, &format!("/v1/payments/{id}")).await.text, w.pm.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_crash_mid_refund_is_told_the_refund_as_it_stands_until_it_settles() {
    let mut w = world(3000).await;
    let r = pay(&w, "crash-refund").await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/payments/{id}/refunds");
    // Stripe takes the refund and never answers (nor calls back); paymux is killed while
    // waiting.
    w.fault(
        "stripe_primary",
        json!({"blackhole": true, "process_before_error": true, "ops": ["refund"], "callbacks": {"drop": true}}),
    )
    .await;
    let before = w.sim_stats("stripe_primary").await["requests"].as_u64().unwrap();
    let (api, p) = (w.pm.api.clone(), path.clone());
    let first = tokio::spawn(async move { post(&api, &p, Some("crash-rf"), json!({"amount": 500})).await });
    let out = eventually(Duration::from_secs(5), || async {
        w.sim_stats("stripe_primary").await["requests"].as_u64().unwrap() > before
    })
    .await;
    assert!(out, "the refund never reached the simulator");
    w.pm.kill9();
    let _ = first.await;
    // Its status cannot be asked yet: the retry is told the refund is pending, and that
    // answer is not kept as the key's.
    w.fault("stripe_primary", json!({"error_rate_pct": 100, "error_status": 500, "ops": ["query"]})).await;
    w.restart();
    let early = post(&w.pm.api, &path, Some("crash-rf"), json!({"amount": 500})).await;
    assert_eq!(early.status, 200, "{}", early.text);
    assert_eq!(early.body["status"], "pending", "{}", early.text);
    let refund_id = early.body["id"].as_str().unwrap().to_string();
    w.clear("stripe_primary").await;
    let settled = reaches(&w.pm.api, &format!("/v1/payments/{id}"), "partially_refunded", 10).await;
    assert!(settled, "log:\n{}", w.pm.log());
    let again = post(&w.pm.api, &path, Some("crash-rf"), json!({"amount": 500})).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(
        (again.body["id"].as_str(), again.body["status"].as_str()),
        (Some(refund_id.as_str()), Some("succeeded"))
    );
    // Once settled it is the key's answer; one refund at the provider.
    let replay = post(&w.pm.api, &path, Some("crash-rf"), json!({"amount": 500})).await;
    assert_eq!(replay.text, again.text);
    assert_eq!(count_rows(&w.pm.data, "refunds"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_refund_keeps_its_reservation_while_its_call_is_out() {
    let w = world(5000).await;
    let r = pay(&w, "slow-refund").await;
    let id = r.body["id"].as_str().unwrap().to_string();
    w.fault("stripe_primary", json!({"latency_ms": 2500, "ops": ["refund"]})).await;
    let requests = || async { w.sim_stats("stripe_primary").await["requests"].as_u64().unwrap() };
    let before = requests().await;
    let api = w.pm.api.clone();
    let path = format!("/v1/payments/{id}/refunds");
    let slow = tokio::spawn(async move { post(&api, &path, Some("slow-a"), json!({})).await });
    // A reconciler pass or two (every second; a refund is due 500 ms after it was reserved)
    // goes by while the call is out: none may take the provider's "no such refund yet" for an
    // answer and release the reservation, nor ask about a refund whose call is still out.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(requests().await - before, 1, "only the refund itself reached the provider; log:\n{}", w.pm.log());
    let statuses: Vec<String> = rusqlite::Connection::open(w.pm.data.join("paymux.db"))
        .unwrap()
        .prepare("SELECT status FROM refunds")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(statuses, ["pending"], "log:\n{}", w.pm.log());
    let second = post(&w.pm.api, &format!("/v1/payments/{id}/refunds"), Some("slow-b"), json!({"amount": 100})).await;
    assert_eq!(second.status, 422, "{}", second.text);
    assert_eq!(second.body["code"], "refund_amount_exceeds");
    let a = slow.await.unwrap();
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["status"], "succeeded", "{}", a.text);
    assert_eq!(get(&w.pm.api, &format!("/v1/payments/{id}")).await.body["status"], "refunded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_with_lost_answers_are_settled_by_the_reconciler() {
    let w = world(400).await;
    let r = pay(&w, "refund-lost").await;
    let id = r.body["id"].as_str().unwrap().to_string();
    // The provider processes the refund but its answer and its callback are lost.
    w.fault(
        "stripe_primary",
        json!({"blackhole": true, "process_before_error": true, "ops": ["refund"], "callbacks": {"drop": true}}),
    )
    .await;
    let rf = post(&w.pm.api, &format!("/v1/payments/{id}/refunds"), Some("lost-1"), json!({"amount": 1000})).await;
    assert_eq!(rf.status, 201, "{}", rf.text);
    assert_eq!(rf.body["status"], "pending");
    // A refund that never reached the provider: with no record of it well after the send,
    // the reconciler sends it again under its own reference, and it happens (once).
    w.fault("stripe_primary", json!({"blackhole": true, "ops": ["refund"], "callbacks": {"drop": true}})).await;
    let rf2 = post(&w.pm.api, &format!("/v1/payments/{id}/refunds"), Some("lost-2"), json!({"amount": 2000})).await;
    assert_eq!(rf2.body["status"], "pending", "{}", rf2.text);
    w.fault("stripe_primary", json!({"callbacks": {"drop": true}})).await;
    let settled = eventually(Duration::from_secs(15), || async {
        let a = get(&w.pm.api, &format!("/v1/refunds/{}", rf.body["id"].as_str().unwrap())).await;
        let b = get(&w.pm.api, &format!("/v1/refunds/{}", rf2.body["id"].as_str().unwrap())).await;
        a.body["status"] == "succeeded" && b.body["status"] == "succeeded"
    })
    .await;
    assert!(settled, "pending refunds were not reconciled; log:\n{}", w.pm.log());
    let g = get(&w.pm.api, &format!("/v1/payments/{id}")).await;
    assert_eq!(g.body["status"], "partially_refunded");
    assert_eq!(g.body["amount_refunded"], 3000);
    assert_eq!(w.sim_payments("stripe_primary").await[0]["amount_refunded"], 3000, "each refund made once");
    let rest = post(&w.pm.api, &format!("/v1/payments/{id}/refunds"), Some("rest"), json!({})).await;
    assert_eq!(rest.body["amount"], 1200, "{}", rest.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_the_provider_carries_out_late_is_never_made_twice() {
    let w = world(400).await;
    let r = pay(&w, "refund-late").await;
    let id = r.body["id"].as_str().unwrap().to_string();
    // The provider sits on the refund for 4 s (well past paymux's timeout and the time after
    // which it trusts "no such refund"), then makes it; its callback is lost.
    w.fault("stripe_primary", json!({"latency_ms": 4000, "ops": ["refund"], "times": 1, "callbacks": {"drop": true}}))
        .await;
    let rf = post(&w.pm.api, &format!("/v1/payments/{id}/refunds"), Some("late-1"), json!({"amount": 1000})).await;
    assert_eq!(rf.body["status"], "pending", "{}", rf.text);
    let rid = rf.body["id"].as_str().unwrap().to_string();
    let settled = reaches(&w.pm.api, &format!("/v1/refunds/{rid}"), "succeeded", 15).await;
    assert!(settled, "refund not settled; log:\n{}", w.pm.log());
    // Past the provider's late execution: still one refund, at the provider and in paymux.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(w.sim_payments("stripe_primary").await[0]["amount_refunded"], 1000);
    let g = get(&w.pm.api, &format!("/v1/payments/{id}")).await;
    assert_eq!(g.body["amount_refunded"], 1000, "{}", g.text);
    let rf = get(&w.pm.api, &format!("/v1/refunds/{rid}")).await;
    assert!(rf.body["error_code"].is_null(), "a refund that succeeded carries no error: {}", rf.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_that_could_not_be_sent_leaves_its_key_free_for_a_retry() {
    let w = world(3000).await;
    let r = pay(&w, "refund-down").await;
    let id = r.body["id"].as_str().unwrap().to_string();
    w.fault("stripe_primary", json!({"down": true})).await;
    let first = post(&w.pm.api, &format!("/v1/payments/{id}/refunds"), Some("down-1"), json!({"amount": 300})).await;
    assert_eq!(first.status, 502, "{}", first.text);
    w.clear("stripe_primary").await;
    let again = post(&w.pm.api, &format!("/v1/payments/{id}/refunds"), Some("down-1"), json!({"amount": 300})).await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.body["status"], "succeeded", "{}", again.text);
    // Rate limited by the provider: as transient, and the key stays free too.
    w.fault("stripe_primary", json!({"error_rate_pct": 100, "error_status": 429, "ops": ["refund"], "times": 1})).await;
    let limited = post(&w.pm.api, &format!("/v1/payments/{id}/refunds"), Some("down-2"), json!({"amount": 200})).await;
    assert_eq!(limited.status, 502, "{}", limited.text);
    let again = post(&w.pm.api, &format!("/v1/payments/{id}/refunds"), Some("down-2"), json!({"amount": 200})).await;
    assert_eq!(again.body["status"], "succeeded", "{}", again.text);
}
