//! Store cost of one payment: its two writes (claim + payment + first attempt before the
//! provider is called; last attempt + result + stored response before the app is answered),
//! against the cheapest durable write in the same run: one commit of one small row (a webhook
//! event id). SQLite in WAL mode with `synchronous=NORMAL`, as `paymux serve` runs it, so the
//! two writes are journal appends (what a request waits for); applying them to SQLite happens
//! off the request path, measured on its own per payment, in batches of 10 payments (10 ms of
//! traffic at 1,000 payments/s, the applier's period). WAL checkpoints happen every 1,000
//! payments outside the timed region, as the housekeeping task does them.

use criterion::{criterion_group, criterion_main, Criterion};
use paymux::domain::{new_id, Currency, Method, PaymentStatus};
use paymux::store::sqlite::SqliteStore;
use paymux::store::{AttemptRow, IdemRecord, PaymentRow, Store, Write};
use std::time::{Duration, Instant};

fn payment(id: &str) -> PaymentRow {
    PaymentRow {
        id: id.into(),
        api_key_id: "demo".into(),
        order_id: "order-42".into(),
        method: Method::Visa,
        amount: 19_999,
        currency: Currency::parse("HKD").unwrap(),
        status: PaymentStatus::Processing,
        channel: None,
        attempt_ref: None,
        provider_ref: None,
        route_rule: "cards-and-wallets".into(),
        next_action: None,
        error_code: None,
        error_message: None,
        refunded: 0,
        metadata: serde_json::json!({"cart": "c-1"}),
        customer: serde_json::json!({"id": "cus-7", "country": "HK"}),
        return_url: None,
        policy_version: "0123456789abcdef".into(),
        created_at: 1,
        updated_at: 1,
        reconcile_at: None,
        reconcile_backoff_ms: 0,
    }
}

/// Both writes of one successful card payment; returns the time spent in them.
fn one_payment(s: &SqliteStore) -> Duration {
    let id = new_id("pay");
    let p = payment(&id);
    let mut a = AttemptRow::pending(&id, 1, "stripe_primary", 1);
    let claim = IdemRecord {
        api_key_id: "demo".into(),
        key: new_id("key"),
        request_hash: "0".repeat(64),
        resource_id: Some(id.clone()),
        created_at: 1,
        expires_at: i64::MAX,
    };
    let key = claim.key.clone();
    let first = [Write::ClaimIdempotency(claim), Write::InsertPayment(p.clone()), Write::InsertAttempt(a.clone())];
    let mut done = p;
    done.status = PaymentStatus::Succeeded;
    done.channel = Some("stripe_primary".into());
    done.provider_ref = Some(new_id("pi"));
    done.attempt_ref = Some(a.attempt_ref.clone());
    a.outcome = "accepted".into();
    a.provider_ref = done.provider_ref.clone();
    // A rendered payment response is about 700 bytes.
    let body = vec![b'x'; 700];
    let last = [
        Write::UpdateAttempt(a),
        Write::UpdatePayment(done),
        Write::CompleteIdempotency { api_key_id: "demo".into(), key, status: 201, body },
    ];
    let t = Instant::now();
    s.write_batch(first.into()).unwrap();
    s.write_batch(last.into()).unwrap();
    t.elapsed()
}

/// Payments per journal apply.
const APPLY_EVERY: u64 = 10;

/// Runs `iters` timed operations, applying the journal every [`APPLY_EVERY`] and
/// checkpointing every 1,000 operations outside the timing.
fn timed(s: &SqliteStore, done: &mut u64, iters: u64, mut op: impl FnMut(&SqliteStore) -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        total += op(s);
        *done += 1;
        if (*done).is_multiple_of(APPLY_EVERY) {
            s.apply_journal().unwrap();
        }
        if (*done).is_multiple_of(1000) {
            s.checkpoint().unwrap();
        }
    }
    total
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path(), false).unwrap();
    let mut g = c.benchmark_group("store");
    let mut done = 0u64;
    g.bench_function("baseline_one_row_commit", |b| {
        b.iter_custom(|iters| {
            timed(&s, &mut done, iters, |s| {
                let id = new_id("evt");
                let t = Instant::now();
                s.webhook_seen("stripe_primary", &id, 1).unwrap();
                t.elapsed()
            })
        })
    });
    g.bench_function("payment_request_path_two_journal_writes", |b| {
        b.iter_custom(|iters| timed(&s, &mut done, iters, one_payment))
    });
    // Per payment: journal APPLY_EVERY payments (untimed), then time applying them.
    g.bench_function("payment_applied_off_path_per_payment", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                for _ in 0..APPLY_EVERY {
                    one_payment(&s);
                }
                let t = Instant::now();
                s.apply_journal().unwrap();
                total += t.elapsed() / APPLY_EVERY as u32;
                if i % 100 == 99 {
                    s.checkpoint().unwrap();
                }
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
