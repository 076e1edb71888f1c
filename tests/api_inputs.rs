//! Bad input never gets through and never stores anything; idempotency rules; durability
//! across kill -9; audit tamper detection. Runs the real binary; providers are unreachable
//! here (closed ports), which these behaviours must not depend on.

mod common;
use common::*;
use serde_json::json;

struct World {
    _tmp: tempfile::TempDir,
    pm: Paymux,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (cfg, data) = (tmp.path().join("cfg"), tmp.path().join("data"));
    write_config(&cfg, ports, &data, 1000);
    let pm = Paymux::start(&cfg, &data, ports);
    World { _tmp: tmp, pm }
}

#[tokio::test]
async fn bad_inputs_get_specific_problems_and_store_nothing() {
    let w = world();
    let base = &w.pm.api;
    let c = client();
    let url = format!("{base}/v1/payments");
    let ok = card("o-1", 1000);

    // (description, request, status, code)
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("no key", c.post(&url).header("idempotency-key", "a").json(&ok), 401, "unauthorized"),
        ("wrong key", c.post(&url).bearer_auth("nope").header("idempotency-key", "a").json(&ok), 401, "unauthorized"),
        ("no idempotency key", c.post(&url).bearer_auth(KEY).json(&ok), 400, "idempotency_key_missing"),
        ("long idempotency key", c.post(&url).bearer_auth(KEY).header("idempotency-key", "k".repeat(256)).json(&ok), 400, "idempotency_key_invalid"),
        ("malformed json", c.post(&url).bearer_auth(KEY).header("idempotency-key", "b").body("{\"amount\": 1"), 400, "malformed_json"),
        ("empty body", c.post(&url).bearer_auth(KEY).header("idempotency-key", "b2"), 400, "malformed_json"),
        ("body too large", c.post(&url).bearer_auth(KEY).header("idempotency-key", "c").body(vec![b' '; 70_000]), 413, "body_too_large"),
        ("amount 0", c.post(&url).bearer_auth(KEY).header("idempotency-key", "d").json(&json!({"amount":0,"currency":"HKD","method":"visa","order_id":"o","payment_method_data":{"token":"pm_card_visa"}})), 422, "validation_failed"),
        ("negative", c.post(&url).bearer_auth(KEY).header("idempotency-key", "e").json(&json!({"amount":-1,"currency":"HKD","method":"visa","order_id":"o","payment_method_data":{"token":"pm_card_visa"}})), 422, "validation_failed"),
        ("overflow", c.post(&url).bearer_auth(KEY).header("idempotency-key", "f").body(r#"{"amount":123456789012345678901234567890,"currency":"HKD","method":"visa","order_id":"o","payment_method_data":{"token":"t"}}"#), 422, "validation_failed"),
        ("float", c.post(&url).bearer_auth(KEY).header("idempotency-key", "g").json(&json!({"amount":10.5,"currency":"HKD","method":"visa","order_id":"o","payment_method_data":{"token":"t"}})), 422, "validation_failed"),
        ("string amount", c.post(&url).bearer_auth(KEY).header("idempotency-key", "h").json(&json!({"amount":"10","currency":"HKD","method":"visa","order_id":"o","payment_method_data":{"token":"t"}})), 422, "validation_failed"),
        ("unknown currency", c.post(&url).bearer_auth(KEY).header("idempotency-key", "i").json(&json!({"amount":10,"currency":"XYZ","method":"visa","order_id":"o","payment_method_data":{"token":"t"}})), 422, "validation_failed"),
        ("unknown method", c.post(&url).bearer_auth(KEY).header("idempotency-key", "j").json(&json!({"amount":10,"currency":"HKD","method":"cash","order_id":"o"})), 422, "validation_failed"),
        ("unknown field", c.post(&url).bearer_auth(KEY).header("idempotency-key", "k").json(&json!({"amount":10,"currency":"HKD","method":"visa","order_id":"o","payment_method_data":{"token":"t"},"amout":1})), 422, "validation_failed"),
        ("no route", c.post(&url).bearer_auth(KEY).header("idempotency-key", "l").json(&json!({"amount":10,"currency":"EUR","method":"visa","order_id":"o","payment_method_data":{"token":"t"}})), 422, "no_route"),
        ("unrouted method", c.post(&url).bearer_auth(KEY).header("idempotency-key", "m").json(&json!({"amount":10,"currency":"HKD","method":"octopus","order_id":"o"})), 422, "no_route"),
    ];
    for (what, req, status, code) in cases {
        let r = send(req).await;
        assert_eq!(r.status, status, "{what}: {}", r.text);
        assert_eq!(r.body["code"], code, "{what}: {}", r.text);
        assert_eq!(r.headers["content-type"], "application/problem+json", "{what}");
        for k in ["type", "title", "status", "detail"] {
            assert!(!r.body[k].is_null(), "{what}: no {k}");
        }
    }
    // Field errors name the field.
    let r = create(base, "n", json!({"amount":0,"currency":"hkd","method":"visa","order_id":"o"})).await;
    let fields: Vec<&str> = r.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"amount") && fields.contains(&"currency") && fields.contains(&"payment_method_data.token"), "{fields:?}");
    for table in ["payments", "attempts", "idempotency", "refunds"] {
        assert_eq!(count_rows(&w.pm.data, table), 0, "{table} must stay empty");
    }
    // Unknown endpoint and method.
    assert_eq!(get(base, "/v1/nope").await.status, 404);
    assert_eq!(send(client().delete(format!("{base}/v1/payments")).bearer_auth(KEY)).await.status, 405);
    assert_eq!(get(base, "/v1/payments/pay_doesnotexist").await.body["code"], "payment_not_found");
}

#[tokio::test]
async fn idempotency_replays_and_rejects_reuse() {
    let w = world();
    let base = &w.pm.api;
    let first = create(base, "same-key", card("o-2", 1500)).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let again = create(base, "same-key", card("o-2", 1500)).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id"], first.body["id"]);
    // Key order in the body does not matter.
    let reordered = send(client().post(format!("{base}/v1/payments")).bearer_auth(KEY).header("idempotency-key", "same-key").body(
        r#"{"payment_method_data":{"token":"pm_card_visa"},"order_id":"o-2","method":"visa","currency":"HKD","amount":1500}"#,
    ))
    .await;
    assert_eq!(reordered.status, 200, "{}", reordered.text);
    let other = create(base, "same-key", card("o-2", 1501)).await;
    assert_eq!(other.status, 422);
    assert_eq!(other.body["code"], "idempotency_key_reused");
    assert_eq!(count_rows(&w.pm.data, "payments"), 1);
}

#[tokio::test]
async fn acknowledged_payment_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (cfg, data) = (tmp.path().join("cfg"), tmp.path().join("data"));
    write_config(&cfg, ports, &data, 1000);
    let mut pm = Paymux::start(&cfg, &data, ports);
    let r = create(&pm.api, "durable", card("o-3", 777)).await;
    assert_eq!(r.status, 201);
    let id = r.body["id"].as_str().unwrap().to_string();
    pm.kill9();
    let pm = Paymux::start(&cfg, &data, ports);
    let g = get(&pm.api, &format!("/v1/payments/{id}")).await;
    assert_eq!(g.status, 200, "{}", g.text);
    assert_eq!(g.body["amount"], 777);
    assert_eq!(g.body["attempts"].as_array().unwrap().len(), 2);
    // The idempotent response survived too.
    let replay = create(&pm.api, "durable", card("o-3", 777)).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body["id"], id.as_str());
}

#[tokio::test]
async fn audit_chain_verifies_and_detects_tampering() {
    let w = world();
    for i in 0..3 {
        create(&w.pm.api, &format!("a{i}"), card(&format!("o-a{i}"), 100 + i)).await;
    }
    let audit = w.pm.data.join("audit.jsonl");
    assert!(eventually(std::time::Duration::from_secs(5), || async { std::fs::read_to_string(&audit).map(|t| t.lines().count() >= 10).unwrap_or(false) }).await);
    let verify = |p: &std::path::Path| std::process::Command::new(env!("CARGO_BIN_EXE_paymux")).args(["audit", "verify"]).arg(p).output().unwrap();
    let copy = w.pm.data.join("copy.jsonl");
    std::fs::copy(&audit, &copy).unwrap();
    let out = verify(&copy);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let text = std::fs::read_to_string(&copy).unwrap();
    // Never a key or a token in the audit trail.
    assert!(!text.contains(KEY) && !text.contains("pm_card_visa"), "secret in audit log");
    let lines: Vec<&str> = text.lines().collect();
    let tampered: Vec<String> = lines.iter().enumerate().map(|(i, l)| if i == 4 { l.replace("\"actor\":\"demo_app\"", "\"actor\":\"mallory\"").replace("\"actor\":\"system\"", "\"actor\":\"mallory\"") } else { l.to_string() }).collect();
    assert_ne!(tampered[4], lines[4], "tamper target must change");
    std::fs::write(&copy, tampered.join("\n") + "\n").unwrap();
    let out = verify(&copy);
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(msg.contains("line 5: record seq 5"), "{msg}");
}

#[tokio::test]
async fn api_speaks_http2_cleartext() {
    let w = world();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2.post(format!("{}/v1/payments", w.pm.api)).bearer_auth(KEY).header("idempotency-key", "h2").json(&card("o-h2", 100)).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 201);
    let bad = h2.post(format!("{}/v1/payments", w.pm.api)).header("idempotency-key", "h2b").json(&card("o-h2", 100)).send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
}
