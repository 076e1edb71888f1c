//! Routing decision cost at 100, 1,000 and 10,000 rules (target: ≤ 5 µs median at 10,000).
//!
//! Rules are spread the way a large merchant's policy would be: every method, 20 currencies,
//! amount bands, country lists and metadata conditions, so a payment's candidate list (the
//! index by method and currency) holds a realistic share of the rules. Facts are drawn from the
//! same distribution, and a share of them fall through to the default route, which is the
//! slowest path (every candidate checked).
//!
//! `shadow_check`: finding rules an earlier rule shadows, which every config load runs over
//! all pairs of rules, for rules naming all 20 currencies and 30 of 40 countries each (the
//! set comparisons are the cost), against the pairwise `Rule::covers` scan in the same run.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use paymux::domain::{Currency, Method};
use paymux::policy::routing::{shadowed, AmountRange, MethodSet, Router, Rule, Target};
use paymux::policy::Facts;
use std::collections::BTreeMap;

const CURRENCIES: [&str; 20] = [
    "HKD", "USD", "CNY", "EUR", "GBP", "JPY", "SGD", "AUD", "CAD", "TWD", "KRW", "THB", "MYR", "PHP", "IDR", "INR",
    "NZD", "CHF", "AED", "MOP",
];
const COUNTRIES: [&str; 8] = ["HK", "CN", "TW", "SG", "US", "GB", "JP", "MO"];

fn rules(n: usize) -> Router {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let m = Method::ALL[i % 14];
        let c = Currency::parse(CURRENCIES[(i / 14) % 20]).unwrap();
        let band = (i / 280) as i64;
        v.push(Rule {
            name: format!("r{i}"),
            methods: MethodSet::of([m]),
            currencies: Some(vec![c]),
            amount: Some(vec![AmountRange { currency: c, min: Some(band * 10_000), max: Some(band * 10_000 + 9_999) }]),
            countries: Some(vec![COUNTRIES[i % 8].to_string(), COUNTRIES[(i + 3) % 8].to_string()]),
            metadata: if i % 3 == 0 { vec![("channel".into(), "web".into())] } else { vec![] },
            rollout_percent: if i % 5 == 0 { Some(50) } else { None },
            target: Target::Ordered(vec![i % 7, (i + 1) % 7]),
            takes: vec![],
        });
    }
    Router::new(v, Some(Target::Ordered(vec![0])))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing_decision");
    let md_web: BTreeMap<String, String> = [("channel".to_string(), "web".to_string())].into();
    let md_none = BTreeMap::new();
    let orders: Vec<String> = (0..64).map(|i| format!("order-{i}")).collect();
    for n in [100usize, 1_000, 10_000] {
        let r = rules(n);
        let facts: Vec<Facts> = (0..64)
            .map(|i| Facts {
                method: Method::ALL[(i * 5) % 14],
                currency: Currency::parse(CURRENCIES[(i * 7) % 20]).unwrap(),
                amount_minor: ((i * 7919) % 400_000) as i64,
                country: Some(COUNTRIES[i % 8]),
                metadata: if i % 2 == 0 { &md_web } else { &md_none },
                customer_id: None,
                order_id: &orders[i],
            })
            .collect();
        let mut k = 0;
        g.bench_with_input(BenchmarkId::new("indexed", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % facts.len();
                black_box(r.evaluate(black_box(&facts[k])))
            })
        });
        // Baseline in the same run: first match by scanning every rule in order.
        g.bench_with_input(BenchmarkId::new("linear_scan_baseline", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % facts.len();
                let f = black_box(&facts[k]);
                black_box(r.rules().iter().position(|rule| rule.matches(f)))
            })
        });
    }
    g.finish();
}

/// `n` rules for one method, each naming every currency and 30 of 40 countries.
fn wide_rules(n: usize) -> Vec<Rule> {
    let currencies: Vec<Currency> = CURRENCIES.iter().map(|c| Currency::parse(c).unwrap()).collect();
    (0..n)
        .map(|i| Rule {
            name: format!("r{i}"),
            methods: MethodSet::of([Method::Visa]),
            currencies: Some(currencies.clone()),
            amount: None,
            countries: Some((0..30).map(|k| format!("C{}", (i * 7 + k) % 40)).collect()),
            metadata: vec![],
            rollout_percent: None,
            target: Target::Ordered(vec![0]),
            takes: vec![],
        })
        .collect()
}

fn bench_shadow_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("shadow_check");
    g.sample_size(10);
    for n in [1_000usize, 10_000] {
        let rules = wide_rules(n);
        let refs: Vec<&Rule> = rules.iter().collect();
        g.bench_with_input(BenchmarkId::new("bitsets", n), &n, |b, _| b.iter(|| black_box(shadowed(&refs))));
        if n <= 1_000 {
            g.bench_with_input(BenchmarkId::new("pairwise_covers_baseline", n), &n, |b, _| {
                b.iter(|| {
                    let found: Vec<(usize, usize)> = (0..rules.len())
                        .filter_map(|j| (0..j).find(|&i| rules[i].covers(&rules[j])).map(|i| (j, i)))
                        .collect();
                    black_box(found)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench, bench_shadow_check);
criterion_main!(benches);
