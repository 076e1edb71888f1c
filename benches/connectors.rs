//! Translate + sign cost per connector, against a baseline in the same run: serialising the
//! same payment to JSON with no signature. The Antom figure is dominated by one RSA-2048
//! PKCS#1 v1.5 signature (ring); the engine runs it on the blocking pool.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use paymux::connector::antom::Antom;
use paymux::connector::stripe::Stripe;
use paymux::connector::{Connector, CreateRequest};
use paymux::domain::{Currency, Method, Money, Secret};
use std::collections::BTreeMap;

fn bench(c: &mut Criterion) {
    let md: BTreeMap<String, String> = [("cart".to_string(), "c-1".to_string())].into();
    let pmd = serde_json::json!({"token": "pm_card_visa"});
    let req = CreateRequest {
        payment_id: "pay_0123456789abcdefghijklmn",
        attempt_ref: "pay_0123456789abcdefghijklmn-a1",
        money: Money::new(19_999, Currency::parse("HKD").unwrap()).unwrap(),
        method: Method::Visa,
        order_id: "order-42",
        customer_id: Some("cus-7"),
        customer_email: None,
        payment_method_data: Some(&pmd),
        return_url: Some("https://shop.example.hk/return"),
        metadata: &md,
        notify_url: "https://pay.example.hk/v1/webhooks/x",
    };
    let stripe = Stripe::new(Secret::new("sk_test_bench".into()), Secret::new("whsec_bench".into()), 300, 0);
    let antom = Antom::new(
        "SANDBOX_BENCH".into(),
        include_str!("../sandbox/keys/antom_merchant_private.pem"),
        include_str!("../sandbox/keys/antom_provider_public.pem"),
        1,
        None,
    )
    .unwrap();
    let mut g = c.benchmark_group("translate_sign");
    g.bench_function("baseline_json_only", |b| {
        b.iter(|| {
            black_box(serde_json::to_vec(&serde_json::json!({"amount": req.money.minor(), "currency": "HKD", "order": req.order_id, "ref": req.attempt_ref, "metadata": req.metadata})).unwrap())
        })
    });
    g.bench_function("stripe", |b| b.iter(|| black_box(stripe.build_create(black_box(&req)).unwrap())));
    let alipay = CreateRequest { method: Method::AlipayHk, payment_method_data: None, ..req.clone() };
    g.bench_function("antom_rsa2048", |b| b.iter(|| black_box(antom.build_create(black_box(&alipay)).unwrap())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
