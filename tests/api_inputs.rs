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
    world_with(|_| {})
}

/// A world whose config directory `edit` changes first.
fn world_with(edit: impl FnOnce(&std::path::Path)) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (cfg, data) = (tmp.path().join("cfg"), tmp.path().join("data"));
    write_config(&cfg, ports, &data, 1000);
    edit(&cfg);
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
        ("two idempotency keys", c.post(&url).bearer_auth(KEY).header("idempotency-key", "a1").header("idempotency-key", "a2").json(&ok), 400, "idempotency_key_invalid"),
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
        ("card number as token", c.post(&url).bearer_auth(KEY).header("idempotency-key", "p").json(&json!({"amount":10,"currency":"HKD","method":"visa","order_id":"o","payment_method_data":{"token":"4000 0566 5566 5556"}})), 422, "validation_failed"),
        ("50 metadata keys on a Stripe route", c.post(&url).bearer_auth(KEY).header("idempotency-key", "md").json(&with_metadata(50)), 422, "validation_failed"),
        ("repeated key", c.post(&url).bearer_auth(KEY).header("idempotency-key", "o").body(r#"{"amount":1000,"amount":2000,"currency":"HKD","method":"visa","order_id":"o","payment_method_data":{"token":"pm_card_visa"}}"#), 400, "malformed_json"),
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
    assert!(
        fields.contains(&"amount") && fields.contains(&"currency") && fields.contains(&"payment_method_data.token"),
        "{fields:?}"
    );
    for table in ["payments", "attempts", "idempotency", "refunds"] {
        assert_eq!(count_rows(&w.pm.data, table), 0, "{table} must stay empty");
    }
    // A request no routed channel can take says why, and keeps its key free: corrected under
    // the same key, it goes through.
    let r = create(base, "md", with_metadata(50)).await;
    assert_eq!(r.body["errors"][0]["field"], "metadata", "{}", r.text);
    assert!(r.body["errors"][0]["message"].as_str().unwrap().contains("49"), "{}", r.text);
    assert_eq!(create(base, "md", with_metadata(49)).await.status, 201);
    // Unknown endpoint and method.
    assert_eq!(get(base, "/v1/nope").await.status, 404);
    let m = send(client().delete(format!("{base}/v1/payments")).bearer_auth(KEY)).await;
    assert_eq!(m.status, 405);
    assert_eq!(m.headers["allow"], "POST");
    assert_eq!(get(base, "/v1/payments/pay_doesnotexist").await.body["code"], "payment_not_found");
    // HEAD is GET without the body, on the same kept-alive connection as the GET after it.
    let paid = create(base, "head", card("o-head", 1000)).await;
    let path = format!("/v1/payments/{}", paid.body["id"].as_str().unwrap());
    let c = client();
    let head = send(c.head(format!("{base}{path}")).bearer_auth(KEY)).await;
    let full = send(c.get(format!("{base}{path}")).bearer_auth(KEY)).await;
    assert_eq!((head.status, head.text.as_str()), (200, ""));
    assert_eq!(head.headers["content-length"], full.text.len().to_string().as_str());
    assert_eq!(full.body["id"], paid.body["id"]);
    let m = send(client().delete(format!("{base}{path}")).bearer_auth(KEY)).await;
    assert_eq!((m.status, m.headers["allow"].to_str().unwrap()), (405, "GET, HEAD"));
    let metrics = send(client().head(format!("{}/metrics", w.pm.admin))).await;
    assert_eq!((metrics.status, metrics.text.as_str()), (200, ""));
}

/// A card payment with `n` metadata keys.
fn with_metadata(n: usize) -> serde_json::Value {
    let mut b = card("o-md", 1000);
    b["metadata"] = (0..n).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>().into();
    b
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_times_out_as_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world();
    let addr = w.pm.api.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nIdempotency-Key: slow\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"amount\":1"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "no answer within 30 s");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"request_body_timeout\""), "{text}");
    assert_eq!(count_rows(&w.pm.data, "payments"), 0);
}

#[tokio::test]
async fn a_body_that_trickles_or_stalls_gets_408_after_10_seconds_over_http_1_1_and_2() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world();
    let addr = w.pm.api.trim_start_matches("http://").to_string();
    let t = std::time::Instant::now();
    // HTTP/1.1: a few bytes every 3 s, each read well within the read timeout.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nIdempotency-Key: trickle\r\nContent-Length: 100\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..10 {
            if wr.write_all(b"{\"a\":1,").await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        }
    });
    // HTTP/2: a stream whose body stops after a few bytes (no read timeout applies there).
    let h2 = async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::post(format!("http://{addr}/v1/payments"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("idempotency-key", "stall")
            .header("content-length", "100")
            .body(())
            .unwrap();
        let (resp, mut body) = client.send_request(req, false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"{\"amount\":1"), false).unwrap();
        let resp = tokio::time::timeout(std::time::Duration::from_secs(20), resp).await.expect("no answer in 20 s");
        (resp.unwrap().status().as_u16(), t.elapsed(), body)
    };
    let mut out = Vec::new();
    let h1 = async {
        tokio::time::timeout(std::time::Duration::from_secs(20), rd.read_to_end(&mut out))
            .await
            .expect("no answer")
            .unwrap();
        t.elapsed()
    };
    let ((h2_status, h2_after, _body), h1_after) = tokio::join!(h2, h1);
    writer.abort();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408") && text.contains("request_body_timeout"), "{text}");
    assert_eq!(h2_status, 408);
    for after in [h1_after, h2_after] {
        assert!(after >= std::time::Duration::from_secs(9) && after < std::time::Duration::from_secs(14), "{after:?}");
    }
    assert_eq!(count_rows(&w.pm.data, "payments"), 0);
}

/// Writes `head` line by line, one line every `every`, then the blank line ending the header
/// section; returns the answer and when the connection closed, or what stopped the sending.
async fn trickle(addr: &str, head: &[&str], every: std::time::Duration) -> (String, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = std::time::Instant::now();
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let lines: Vec<String> = head.iter().map(|l| format!("{l}\r\n")).chain(["\r\n".to_string()]).collect();
    let writer = tokio::spawn(async move {
        for l in lines {
            if wr.write_all(l.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        // Keep the write side open: the server decides when this ends.
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(15), rd.read_to_end(&mut out)).await;
    writer.abort();
    assert!(read.is_ok(), "the connection was neither answered nor closed within 15 s");
    (String::from_utf8_lossy(&out).to_string(), start.elapsed())
}

#[tokio::test]
async fn a_client_too_slow_to_send_its_header_is_disconnected() {
    let w = world_with(|cfg| {
        let server = std::fs::read_to_string(cfg.join("server.yaml")).unwrap();
        let limited = server
            .replace("  request_deadline_ms: 10000\n", "  request_deadline_ms: 10000\n  header_timeout_ms: 1000\n");
        assert_ne!(server, limited);
        std::fs::write(cfg.join("server.yaml"), limited).unwrap();
    });
    let pm = &w.pm;
    let addr = pm.api.trim_start_matches("http://").to_string();
    let tick = std::time::Duration::from_millis(300);
    // Within the limit, however slowly: answered (401, no key).
    // (Half the tick: the header ends at 0.45 s, well inside the limit on a loaded machine.)
    let (answer, _) =
        trickle(&addr, &["GET /v1/payments/pay_x HTTP/1.1", "Host: x", "Connection: close"], tick / 2).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // A byte-at-a-time client never finishes: cut off at the limit (one second), not at
    // pingora's 60 s per-read timeout, which each line resets.
    let endless: Vec<String> = (0..40).map(|i| format!("X-Slow-{i}: y")).collect();
    let mut head = vec!["GET /v1/payments/pay_x HTTP/1.1"];
    head.extend(endless.iter().map(String::as_str));
    let (answer, after) = trickle(&addr, &head, tick).await;
    assert_eq!(answer, "", "no request, no answer");
    assert!(
        after >= std::time::Duration::from_millis(900) && after < std::time::Duration::from_secs(5),
        "closed after {after:?}"
    );
    // The service goes on.
    let r = get(&pm.api, "/v1/payments/pay_x").await;
    assert_eq!(r.status, 404, "{}", r.text);
}

#[tokio::test]
async fn framing_in_doubt_closes_the_connection_and_the_rest_follows_http_1_1() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world();
    let addr = w.pm.api.trim_start_matches("http://").to_string();
    let body = serde_json::to_string(&card("o-te", 1000)).unwrap();
    let head = |extra: &str, key: &str| {
        format!("POST /v1/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nIdempotency-Key: {key}\r\n{extra}\r\n")
    };
    // Both Transfer-Encoding and Content-Length: answered, then closed (RFC 9112 §6.3), so
    // nothing behind it is read as a request.
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let req = format!("{}{chunked}", head("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "te-cl"));
    let out = raw_until_closed(&addr, req.as_bytes()).await.expect("connection left open");
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    // A chunk that cannot be read: 400 in paymux's words, then closed.
    let req = format!("{}zz\r\n", head("Transfer-Encoding: chunked\r\n", "bad-chunk"));
    let out = raw_until_closed(&addr, req.as_bytes()).await.expect("connection left open");
    assert!(out.starts_with("HTTP/1.1 400") && out.contains("request_body_unreadable"), "{out}");
    assert!(!out.contains("Custom") && !out.contains("InvalidChunk"), "{out}");
    // HTTP/1.0 without keep-alive: closed after the answer.
    let req = format!("GET /v1/refunds/re_x HTTP/1.0\r\nAuthorization: Bearer {KEY}\r\n\r\n");
    let out = raw_until_closed(&addr, req.as_bytes()).await.expect("connection left open");
    assert!(out.contains(" 404 "), "{out}");
    // HTTP/1.1 names its host exactly once (RFC 9112 §3.2).
    for hosts in ["", "Host: a\r\nHost: b\r\n"] {
        let req = format!("GET /v1/refunds/re_x HTTP/1.1\r\n{hosts}Authorization: Bearer {KEY}\r\n\r\n");
        let out = raw_until_closed(&addr, req.as_bytes()).await.expect("connection left open");
        assert!(out.starts_with("HTTP/1.1 400") && out.contains("malformed_http"), "{out}");
    }
    // An empty Content-Encoding names no coding.
    let req = format!(
        "{}{body}",
        head(&format!("Content-Encoding:\r\nContent-Length: {}\r\nConnection: close\r\n", body.len()), "ce-empty")
    );
    let out = raw_until_closed(&addr, req.as_bytes()).await.expect("connection left open");
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    // Expect: 100-continue gets its go-ahead before the body is sent.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let h = head(&format!("Expect: 100-continue\r\nContent-Length: {}\r\n", body.len()), "expect");
    s.write_all(h.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_millis(500), s.read(&mut buf))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"), "{}", String::from_utf8_lossy(&buf[..n]));
    s.write_all(body.as_bytes()).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.contains("201 Created"), "{answer}");
    // And the connection stays usable: the 100 does not cost the client its keep-alive.
    assert!(answer.to_ascii_lowercase().contains("connection: keep-alive"), "{answer}");
    s.write_all(format!("GET /v1/refunds/re_x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"), "{}", String::from_utf8_lossy(&buf[..n]));
    // Codings paymux would have to undo are refused by name, not read as garbled JSON.
    let req = format!("{}{body}", head(&format!("Content-Encoding: gzip\r\nContent-Length: {}\r\n", body.len()), "gz"));
    let out = raw_first_read(&addr, req.as_bytes(), std::time::Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 415") && out.contains("unsupported_content_encoding"), "{out}");
    let req = format!("{}{chunked}", head("Transfer-Encoding: gzip, chunked\r\n", "te-gz"));
    let out = raw_until_closed(&addr, req.as_bytes()).await.expect("connection left open");
    assert!(out.starts_with("HTTP/1.1 501") && out.contains("unsupported_transfer_encoding"), "{out}");
    // A 401 names its scheme; two Authorization headers are one too many.
    let r = send(client().get(format!("{}/v1/payments/pay_x", w.pm.api))).await;
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"paymux\"");
    let two = client().get(format!("{}/v1/payments/pay_x", w.pm.api)).header("authorization", format!("Bearer {KEY}"));
    let r = send(two.header("authorization", "Bearer another")).await;
    assert_eq!(r.status, 401, "{}", r.text);
}

/// Sends `bytes` on a new connection to `addr`; returns all the server sent before closing,
/// or None when it neither answered nor closed within 10 s.
async fn raw_until_closed(addr: &str, bytes: &[u8]) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    read.ok().map(|_| String::from_utf8_lossy(&out).to_string())
}

/// Sends `bytes` on a new connection to `addr`; returns the first read of the answer, which
/// must come `within`.
async fn raw_first_read(addr: &str, bytes: &[u8], within: std::time::Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(within, s.read(&mut out)).await.expect("no answer in time").unwrap();
    String::from_utf8_lossy(&out[..n]).to_string()
}

#[tokio::test]
async fn a_request_that_is_not_valid_http_gets_a_problem_not_a_silent_close() {
    // Logging at debug, which names why a request was unreadable but never repeats it.
    let tmp = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (cfg, data) = (tmp.path().join("cfg"), tmp.path().join("data"));
    write_config(&cfg, ports, &data, 1000);
    let w = World {
        pm: Paymux::start_env(&cfg, &data, ports, &[("PAYMUX_LOG", Some(std::path::Path::new("debug")))]),
        _tmp: tmp,
    };
    let addr = w.pm.api.trim_start_matches("http://").to_string();
    for head in [
        "POST /v1/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer pmx_test_demo_key\r\nX-Bad Header: 1\r\n\r\n",
        "POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        "POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        "GET /v1/payments/pay_x HTTP/1.1\r\nHo st: x\r\n\r\n",
        // Shorter than the HTTP/2 preface: answered once the listener stops waiting for it.
        "GARBAGE\r\n\r\n",
    ] {
        let read = raw_until_closed(&addr, head.as_bytes()).await;
        assert!(read.is_some(), "connection neither answered nor closed: {head:?}");
        let text = read.unwrap();
        assert!(text.starts_with("HTTP/1.1 400"), "{head:?}: {text}");
        assert!(text.contains("application/problem+json"), "{text}");
        assert!(text.contains("\"code\":\"malformed_http\""), "{text}");
    }
    assert_eq!(count_rows(&w.pm.data, "payments"), 0);
    // The admin listener answers the same way (and is not counted among the API's requests).
    let admin = w.pm.admin.trim_start_matches("http://").to_string();
    let text = raw_until_closed(&admin, b"GET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n").await.expect("admin answer");
    assert!(text.starts_with("HTTP/1.1 400") && text.contains("\"code\":\"malformed_http\""), "{text}");
    // The listener is unharmed.
    let r = get(&w.pm.api, "/v1/payments/pay_0000000000000000000000").await;
    assert_eq!((r.status, r.body["code"].as_str()), (404, Some("payment_not_found")), "{}", r.text);
    let log = std::fs::read_to_string(&w.pm.log).unwrap();
    assert!(log.contains("unreadable request"), "{log}");
    assert!(!log.contains("pmx_test_demo_key") && !log.contains("Bad Header"), "{log}");
    let metrics = client().get(format!("{}/metrics", w.pm.admin)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&metrics, "paymux_http_requests_total", "status=\"400\""), 5.0, "{metrics}");

    // A valid request shorter than the HTTP/2 preface is served too, at once (it used to wait
    // for bytes that never come): its first bytes already say it is not HTTP/2.
    let text = raw_first_read(&addr, b"GET /x HTTP/1.0\r\n\r\n", std::time::Duration::from_secs(1)).await;
    assert!(text.starts_with("HTTP/1.0 404") || text.starts_with("HTTP/1.1 404"), "{text}");
}

/// Sends `head` then `body_len` bytes of body on a new connection to `addr`, writing while
/// the answer is read, as a client streaming a body would. Returns the answer, how reading
/// it ended (an error is a reset) and whether the client could send everything.
async fn send_while_reading(addr: &str, head: String, body_len: usize) -> (String, std::io::Result<usize>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        wr.write_all(&vec![b'x'; body_len]).await?;
        wr.shutdown().await
    });
    let mut out = Vec::new();
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), rd.read_to_end(&mut out))
        .await
        .expect("closed in time");
    (String::from_utf8_lossy(&out).to_string(), end, writer.await.unwrap().is_ok())
}

/// A client still sending when its request turns out unreadable (a body behind a broken
/// header) reads the whole answer and then a clean end of the connection, not a reset: closing
/// with its bytes unread would make the kernel reset the connection, and a client still
/// writing fails on that reset before it reads the answer.
#[tokio::test]
async fn an_unreadable_request_with_more_bytes_behind_it_is_answered_then_closed_cleanly() {
    let w = world();
    let addr = w.pm.api.trim_start_matches("http://").to_string();
    for head in [
        "POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        "POST /v1/payments HTTP/1.1\r\nHo st: x\r\n\r\n",
    ] {
        let (text, end, sent) = send_while_reading(&addr, head.to_string(), 512 << 10).await;
        assert!(text.starts_with("HTTP/1.1 400") && text.contains("\"code\":\"malformed_http\""), "{text}");
        assert!(end.is_ok(), "the connection was reset after the answer: {end:?}");
        assert!(sent, "the client could not finish sending");
    }
}

/// The same for requests answered before their body is read (no API key, a body over the
/// limit, no such endpoint): pingora does not keep those connections, and closed them with the
/// body unread.
#[tokio::test]
async fn a_request_answered_before_its_body_is_read_is_closed_cleanly() {
    let w = world();
    let addr = w.pm.api.trim_start_matches("http://").to_string();
    let len = 4 << 20;
    let auth = format!("Authorization: Bearer {KEY}\r\nIdempotency-Key: early-413\r\n");
    for (head, status, code) in [
        (format!("POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"), "401", "unauthorized"),
        (
            format!("POST /v1/payments HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len}\r\n\r\n"),
            "413",
            "body_too_large",
        ),
        (format!("POST /v1/nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n"), "404", "not_found"),
    ] {
        let (text, end, sent) = send_while_reading(&addr, head, len).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
        assert!(text.contains(&format!("\"code\":\"{code}\"")), "{text}");
        assert!(end.is_ok(), "{status}: the connection was reset after the answer: {end:?}");
        assert!(sent, "{status}: the client could not finish sending");
    }
    assert_eq!(count_rows(&w.pm.data, "payments"), 0);
}

/// A header section pingora will not read because of its size (over 1 MiB) or its number of
/// headers (over 256) is 431, not 400: the client can tell that a shorter request would do.
#[tokio::test]
async fn a_header_section_too_large_is_431() {
    let w = world();
    let addr = w.pm.api.trim_start_matches("http://").to_string();
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    // Just over 1 MiB and never finished: everything sent is read before the answer, so
    // closing does not reset the connection under it.
    let big = format!("X-Big: {}\r\n", "a".repeat(1 << 20));
    for extra in [format!("{many}\r\n"), big] {
        let head = format!("GET /v1/payments/pay_x HTTP/1.1\r\nHost: x\r\n{extra}");
        let read = raw_until_closed(&addr, head.as_bytes()).await;
        assert!(read.is_some(), "connection neither answered nor closed");
        let text = read.unwrap();
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
        assert!(text.contains("\"code\":\"request_header_too_large\""), "{text}");
    }
    let metrics = client().get(format!("{}/metrics", w.pm.admin)).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&metrics, "paymux_http_requests_total", "status=\"431\""), 2.0, "{metrics}");
    // 256 headers are still read.
    let fine: String = (0..250).map(|i| format!("X-H{i}: v\r\n")).collect();
    let head = format!("GET /v1/payments/pay_x HTTP/1.1\r\nHost: x\r\n{fine}\r\n");
    let text = raw_first_read(&addr, head.as_bytes(), std::time::Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
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
    // Nor does a field sent as null instead of left out (both mean "not given").
    let mut with_null = card("o-2", 1500);
    with_null["customer"] = json!(null);
    with_null["metadata"] = json!(null);
    let nulls = create(base, "same-key", with_null).await;
    assert_eq!(nulls.status, 200, "{}", nulls.text);
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
        create(&w.pm.api, &format!("a{i}"), card(&format!("o-a{i}"), 1000 + i)).await;
    }
    let audit = w.pm.data.join("audit.jsonl");
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            std::fs::read_to_string(&audit).map(|t| t.lines().count() >= 10).unwrap_or(false)
        })
        .await
    );
    let verify = |p: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_paymux")).args(["audit", "verify"]).arg(p).output().unwrap()
    };
    let copy = w.pm.data.join("copy.jsonl");
    std::fs::copy(&audit, &copy).unwrap();
    let out = verify(&copy);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let text = std::fs::read_to_string(&copy).unwrap();
    // Never a key or a token in the audit trail.
    assert!(!text.contains(KEY) && !text.contains("pm_card_visa"), "secret in audit log");
    let lines: Vec<&str> = text.lines().collect();
    let tampered: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 4 {
                l.replace("\"actor\":\"demo_app\"", "\"actor\":\"mallory\"")
                    .replace("\"actor\":\"system\"", "\"actor\":\"mallory\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_ne!(tampered[4], lines[4], "tamper target must change");
    std::fs::write(&copy, tampered.join("\n") + "\n").unwrap();
    let out = verify(&copy);
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(msg.contains("line 5: record seq 5"), "{msg}");
}

#[tokio::test]
async fn both_listeners_speak_http2_cleartext() {
    let w = world();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2
        .post(format!("{}/v1/payments", w.pm.api))
        .bearer_auth(KEY)
        .header("idempotency-key", "h2")
        .json(&card("o-h2", 1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 201);
    let bad = h2
        .post(format!("{}/v1/payments", w.pm.api))
        .header("idempotency-key", "h2b")
        .json(&card("o-h2", 1000))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    // The admin listener too.
    let health = h2.get(format!("{}/healthz", w.pm.admin)).send().await.unwrap();
    assert_eq!((health.version(), health.status().as_u16()), (reqwest::Version::HTTP_2, 200));
    let head = h2.head(format!("{}/healthz", w.pm.admin)).send().await.unwrap();
    assert_eq!((head.version(), head.status().as_u16()), (reqwest::Version::HTTP_2, 200));
    assert_eq!(head.bytes().await.unwrap().len(), 0);
}

#[tokio::test]
async fn api_serves_tls_with_http2_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let (cfg, data) = (tmp.path().join("cfg"), tmp.path().join("data"));
    write_config(&cfg, ports, &data, 1000);
    let tls = root().join("sandbox/tls");
    let server = std::fs::read_to_string(cfg.join("server.yaml")).unwrap();
    let server = server.replace(
        "limits:",
        &format!(
            "tls:\n  cert_file: {}\n  key_file: {}\nlimits:",
            tls.join("server.pem").display(),
            tls.join("server.key").display()
        ),
    );
    std::fs::write(cfg.join("server.yaml"), server).unwrap();
    let pm = Paymux::start(&cfg, &data, ports);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(tls.join("ca.pem")).unwrap()).unwrap();
    let c = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let url = format!("https://127.0.0.1:{}/v1/payments", ports.api);
    let r =
        c.post(&url).bearer_auth(KEY).header("idempotency-key", "tls").json(&card("o-tls", 1000)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", pm.log());
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN should pick h2");
    // Plain HTTP to the TLS port does not get an answer.
    assert!(reqwest::get(pm.api.clone() + "/v1/payments/x").await.is_err());
}

#[tokio::test]
async fn sighup_reloads_and_every_api_call_is_audited() {
    let w = world();
    // A 404, a 401 and a 201: each leaves an api.call record naming the key id, never the key.
    let missing = "pay_00000000000000000Missing";
    get(&w.pm.api, &format!("/v1/payments/{missing}")).await;
    send(client().get(format!("{}/v1/payments/{missing}", w.pm.api)).bearer_auth("wrong")).await;
    // A path segment that is no id of ours is not copied into the record (nor 30 KB of it).
    let junk = "Z".repeat(30_000);
    let r = send(client().get(format!("{}/v1/payments/{junk}", w.pm.api))).await;
    assert_eq!(r.status, 401, "{}", r.text);
    create(&w.pm.api, "aud", card("o-aud", 1000)).await;
    // A request that is not HTTP, and one no channel takes, are calls too.
    let addr = w.pm.api.trim_start_matches("http://").to_string();
    raw_until_closed(&addr, b"GET /v1/payments/x HTTP/1.1\r\nHo st: x\r\n\r\n").await.expect("answered");
    let unrouted = json!({"amount": 1000, "currency": "EUR", "method": "visa", "order_id": "o-eur", "payment_method_data": {"token": "pm_card_visa"}});
    assert_eq!(create(&w.pm.api, "aud-eur", unrouted).await.body["code"], "no_route");
    // An admin reload's two records share its request id.
    let reload = send(client().post(format!("{}/admin/reload", w.pm.admin))).await;
    assert_eq!(reload.status, 200, "{}", reload.text);
    let cfg = w.pm.config.clone();
    let routing = std::fs::read_to_string(cfg.join("routing.yaml")).unwrap();
    // Stop the watcher from seeing this write first: SIGHUP must work on its own too.
    std::fs::write(cfg.join("routing.yaml"), routing.replace("name: alipayhk", "name: alipay-hk")).unwrap();
    let pid = w.pm.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let audit = w.pm.data.join("audit.jsonl");
    let ok = eventually(std::time::Duration::from_secs(10), || async {
        let t = std::fs::read_to_string(&audit).unwrap_or_default();
        t.contains("\"actor\":\"system:sighup\",\"action\":\"config.reload\"") && t.contains("\"outcome\":\"applied\"")
    })
    .await;
    assert!(ok, "reload not audited; log:\n{}", w.pm.log());
    let text = std::fs::read_to_string(&audit).unwrap();
    let calls: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["action"] == "api.call")
        .collect();
    assert!(calls.len() >= 3, "{text}");
    assert!(calls.iter().any(|c| c["outcome"] == "404" && c["actor"] == "demo_app" && c["payment_id"] == missing));
    assert!(text.lines().all(|l| l.len() < 2_000), "a record carries the junk path");
    assert!(calls.iter().any(|c| c["outcome"] == "401" && c["actor"] == "anonymous"));
    assert!(calls.iter().any(|c| c["outcome"] == "201" && c["payment_id"].as_str().unwrap_or("").starts_with("pay_")));
    assert!(!text.contains(KEY));
    assert!(calls.iter().any(|c| c["outcome"] == "400" && c["details"]["code"] == "malformed_http"), "{text}");
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(records.iter().any(|r| r["action"] == "route.decision" && r["outcome"] == "no_route"), "{text}");
    let admin = records.iter().find(|r| r["action"] == "admin.reload").expect("admin.reload");
    let by_admin =
        records.iter().find(|r| r["action"] == "config.reload" && r["actor"] == "system:admin").expect("reload");
    assert!(admin["request_id"].is_string() && admin["request_id"] == by_admin["request_id"], "{text}");
    let cfgv = get(&w.pm.admin, "/admin/config").await;
    assert_eq!(cfgv.status, 200);
    assert!(cfgv.body["sources"].as_array().unwrap().len() == 3);
    // The operator sees in the log that the admin reload found nothing to change, and that
    // a stop began.
    assert!(w.pm.log().contains("config read again: nothing changed"), "{}", w.pm.log());
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let said =
        eventually(std::time::Duration::from_secs(5), || async { w.pm.log().contains("SIGTERM: stopping") }).await;
    assert!(said, "{}", w.pm.log());
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["check", "--help"],
        vec!["sandbox", "--help"],
        vec!["audit", "verify", "--help"],
        vec!["key", "hash", "--help"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_paymux")).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
}

#[tokio::test]
async fn a_second_paymux_on_the_same_data_directory_is_refused_at_once() {
    let w = world();
    // The same config and data directory: the first holds the ports too, but the second
    // says what is wrong at once instead of waiting on them.
    let t = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_paymux"))
        .args(["serve", "--config"])
        .arg(&w.pm.config)
        .arg("--data-dir")
        .arg(&w.pm.data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("in use by another paymux process"), "{err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "refused after {:?}", t.elapsed());
}

#[test]
fn the_sandbox_refuses_a_callback_base_and_a_faults_file_it_cannot_use() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_paymux")).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = run(&["sandbox", "--listen", "127.0.0.1:0", "--callback-base", "foo"]);
    assert!(!ok && err.contains("--callback-base `foo` is not an absolute http(s) URL"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let faults = tmp.path().join("faults.yaml");
    std::fs::write(&faults, "stripe_primery:\n  latency_ms: 100\n").unwrap();
    let (ok, err) = run(&["sandbox", "--listen", "127.0.0.1:0", "--faults", faults.to_str().unwrap()]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("faults.yaml: no simulator instance `stripe_primery`") && err.contains("stripe_primary"),
        "{err}"
    );
}
