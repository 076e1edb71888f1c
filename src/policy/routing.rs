//! The routing engine: ordered rules compiled into an index, evaluated first-match.
//!
//! Architecture invariant: this module does no I/O and holds no locks. `Router::evaluate` is a
//! pure function of the compiled rules and the payment's facts, and returns the rule that
//! matched so the audit record can say why a payment went where it went.

use crate::domain::{Currency, Method};
use std::collections::{BTreeMap, HashMap};

/// Index of a channel in the policy's channel list.
pub type ChannelIdx = usize;

/// A set of methods as a bitmask over [`Method::index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MethodSet(u16);

impl MethodSet {
    /// Every method.
    pub const ALL: MethodSet = MethodSet((1 << 14) - 1);
    /// No method.
    pub const EMPTY: MethodSet = MethodSet(0);

    /// Builds a set.
    pub fn of(methods: impl IntoIterator<Item = Method>) -> Self {
        MethodSet(methods.into_iter().fold(0, |acc, m| acc | (1 << m.index())))
    }
    /// Membership.
    pub fn contains(&self, m: Method) -> bool {
        self.0 & (1 << m.index()) != 0
    }
    /// Intersection.
    pub fn and(&self, o: MethodSet) -> MethodSet {
        MethodSet(self.0 & o.0)
    }
    /// `self ⊇ o`.
    pub fn covers(&self, o: MethodSet) -> bool {
        self.0 & o.0 == o.0
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
    /// The members.
    pub fn iter(&self) -> impl Iterator<Item = Method> + '_ {
        Method::ALL.into_iter().filter(|m| self.contains(*m))
    }
}

/// Inclusive amount bounds in minor units for one currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmountRange {
    pub currency: Currency,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

/// Where a matching payment goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Primary first, then backups.
    Ordered(Vec<ChannelIdx>),
    /// One of `weighted` by stable hash of the order id, the other split channels next, then backups.
    Split { weighted: Vec<(ChannelIdx, u32)>, backups: Vec<ChannelIdx> },
}

/// One compiled rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub methods: MethodSet,
    /// Sorted; `None` matches any currency.
    pub currencies: Option<Vec<Currency>>,
    /// One range per listed currency; `None` matches any amount.
    pub amount: Option<Vec<AmountRange>>,
    /// Sorted alpha-2 codes; `None` matches any (and a missing) country.
    pub countries: Option<Vec<String>>,
    /// Key/value pairs that must all be present.
    pub metadata: Vec<(String, String)>,
    /// 0..=100; `None` means everyone.
    pub rollout_percent: Option<u8>,
    pub target: Target,
    /// What its channels take, each a set of methods in its currencies (`None`: any); a
    /// payment none of them takes goes on to the next rule. Empty: no such limit.
    pub takes: Vec<(MethodSet, Option<Vec<Currency>>)>,
}

/// What the engine knows about a payment when routing it.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub method: Method,
    pub currency: Currency,
    pub amount_minor: i64,
    pub country: Option<&'a str>,
    pub metadata: &'a BTreeMap<String, String>,
    pub customer_id: Option<&'a str>,
    pub order_id: &'a str,
}

/// The routing decision: which rule matched and the channels to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<'r> {
    /// Rule name, or `"default"`.
    pub rule: &'r str,
    /// Channels before capability filtering (the engine skips channels that cannot serve).
    pub channels: Vec<ChannelIdx>,
}

/// Compiled rules plus the method/currency index.
#[derive(Debug, Default)]
pub struct Router {
    rules: Vec<Rule>,
    default: Option<Target>,
    /// (method, currency) → candidate rule indices in rule order, for currencies some rule names.
    by_method_currency: HashMap<(u8, Currency), Vec<u32>>,
    /// method → candidate rule indices for rules without a currency condition.
    by_method_any: Vec<Vec<u32>>,
}

impl Router {
    /// Builds the index. Rule order is preserved inside every candidate list.
    pub fn new(rules: Vec<Rule>, default: Option<Target>) -> Router {
        let mut by_method_any: Vec<Vec<u32>> = vec![Vec::new(); Method::ALL.len()];
        let mut mentioned: HashMap<u8, Vec<Currency>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            for m in r.methods.iter() {
                match &r.currencies {
                    None => by_method_any[m.index()].push(i as u32),
                    Some(cs) => mentioned.entry(m.index() as u8).or_default().extend(cs.iter().copied()),
                }
            }
        }
        let mut by_method_currency = HashMap::new();
        for (m, mut cs) in mentioned {
            cs.sort();
            cs.dedup();
            let method = Method::ALL[m as usize];
            for c in cs {
                let list: Vec<u32> = rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| {
                        r.methods.contains(method)
                            && r.currencies.as_ref().is_none_or(|rc| rc.binary_search(&c).is_ok())
                    })
                    .map(|(i, _)| i as u32)
                    .collect();
                by_method_currency.insert((m, c), list);
            }
        }
        Router { rules, default, by_method_currency, by_method_any }
    }

    /// The rules in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every target a payment can be sent to: the rules' and the default route's.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.rules.iter().map(|r| &r.target).chain(self.default.as_ref())
    }

    /// First matching rule, else the default route, else `None`.
    pub fn evaluate<'r>(&'r self, f: &Facts<'_>) -> Option<Decision<'r>> {
        let m = f.method.index();
        let candidates = self.by_method_currency.get(&(m as u8, f.currency)).unwrap_or(&self.by_method_any[m]);
        for &i in candidates {
            let r = &self.rules[i as usize];
            if r.matches_rest(f) && r.takes(f) {
                return Some(Decision { rule: &r.name, channels: r.target.order(f.order_id) });
            }
        }
        self.default.as_ref().map(|t| Decision { rule: "default", channels: t.order(f.order_id) })
    }
}

impl Rule {
    /// Whether this rule alone matches `f` (what the index plus `matches_rest` decide
    /// together; used by tests and the benchmark's linear-scan baseline).
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        self.methods.contains(f.method)
            && self.currencies.as_ref().is_none_or(|c| c.binary_search(&f.currency).is_ok())
            && self.matches_rest(f)
            && self.takes(f)
    }

    /// Whether one of its channels takes the payment's method in its currency.
    fn takes(&self, f: &Facts<'_>) -> bool {
        self.takes.is_empty()
            || self
                .takes
                .iter()
                .any(|(ms, cs)| ms.contains(f.method) && cs.as_ref().is_none_or(|c| c.contains(&f.currency)))
    }

    /// Everything but method and currency, which the index already checked.
    fn matches_rest(&self, f: &Facts<'_>) -> bool {
        if let Some(ranges) = &self.amount {
            let Some(r) = ranges.iter().find(|r| r.currency == f.currency) else {
                return false;
            };
            if r.min.is_some_and(|min| f.amount_minor < min) || r.max.is_some_and(|max| f.amount_minor > max) {
                return false;
            }
        }
        if let Some(cs) = &self.countries {
            match f.country {
                Some(c) if cs.iter().any(|x| x == c) => {}
                _ => return false,
            }
        }
        for (k, v) in &self.metadata {
            if f.metadata.get(k) != Some(v) {
                return false;
            }
        }
        if let Some(p) = self.rollout_percent {
            let key = f.customer_id.unwrap_or(f.order_id);
            let bucket = stable_hash(&[self.name.as_bytes(), b"\0", key.as_bytes()]) % 100;
            if bucket >= u64::from(p) {
                return false;
            }
        }
        true
    }

    /// Every payment `other` matches, `self` matches too (so `other`, if later, is dead).
    pub fn covers(&self, other: &Rule) -> bool {
        Method::ALL.into_iter().all(|m| subset(&self.currencies_for(m), &other.currencies_for(m)))
            && subset(&self.countries, &other.countries)
            && self.covers_rest(other)
    }

    /// The currencies it matches a payment of method `m` in, its channels' capabilities
    /// (`takes`) included: `None` any, an empty list none (it does not match `m`).
    pub fn currencies_for(&self, m: Method) -> Option<Vec<Currency>> {
        if !self.methods.contains(m) {
            return Some(vec![]);
        }
        let taken = if self.takes.is_empty() {
            None
        } else {
            let of_m: Vec<&Option<Vec<Currency>>> =
                self.takes.iter().filter(|(ms, _)| ms.contains(m)).map(|(_, cs)| cs).collect();
            if of_m.is_empty() {
                return Some(vec![]);
            }
            of_m.iter().copied().cloned().collect::<Option<Vec<Vec<Currency>>>>().map(|v| v.concat())
        };
        match (&self.currencies, taken) {
            (None, taken) => taken,
            (Some(mine), None) => Some(mine.clone()),
            (Some(mine), Some(taken)) => Some(mine.iter().filter(|c| taken.contains(c)).copied().collect()),
        }
    }

    /// [`Rule::covers`] but for methods, currencies and countries.
    fn covers_rest(&self, other: &Rule) -> bool {
        match (&self.amount, &other.amount) {
            (None, _) => {}
            (Some(_), None) => return false,
            (Some(a), Some(b)) => {
                for rb in b {
                    let Some(ra) = a.iter().find(|r| r.currency == rb.currency) else {
                        return false;
                    };
                    let lo = match (ra.min, rb.min) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(x), Some(y)) => x <= y,
                    };
                    let hi = match (ra.max, rb.max) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(x), Some(y)) => x >= y,
                    };
                    if !lo || !hi {
                        return false;
                    }
                }
            }
        }
        if !self.metadata.iter().all(|kv| other.metadata.contains(kv)) {
            return false;
        }
        self.rollout_percent.is_none_or(|p| p >= 100)
    }
}

/// For each rule an earlier one shadows (matches every payment it matches, what their
/// channels take included), its index and the first such earlier rule's. Every pair is
/// compared, but by a few word operations per method (bitsets over the currencies and
/// countries the rules name), so 10,000 rules naming dozens of each take well under a second.
pub fn shadowed(rules: &[&Rule]) -> Vec<(usize, usize)> {
    fn bitsets<'a, T: Eq + std::hash::Hash + 'a>(
        sets: impl Iterator<Item = Option<&'a [T]>> + Clone,
    ) -> Vec<Option<Vec<u64>>> {
        let mut index: HashMap<&T, usize> = HashMap::new();
        for x in sets.clone().flatten().flatten() {
            let next = index.len();
            index.entry(x).or_insert(next);
        }
        let words = index.len().div_ceil(64);
        sets.map(|set| {
            set.map(|xs| {
                let mut b = vec![0u64; words];
                for x in xs {
                    let i = index[x];
                    b[i / 64] |= 1 << (i % 64);
                }
                b
            })
        })
        .collect()
    }
    // None = any, which contains everything.
    let within = |mine: &Option<Vec<u64>>, theirs: &Option<Vec<u64>>| match (mine, theirs) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a.iter().zip(b).all(|(x, y)| y & !x == 0),
    };
    // Per rule and method, the currencies it matches that method in (what its channels take
    // included), at `r * 14 + m`; and the methods it matches at all.
    let per_method: Vec<Option<Vec<Currency>>> =
        rules.iter().flat_map(|r| Method::ALL.into_iter().map(|m| r.currencies_for(m))).collect();
    let matched: Vec<MethodSet> = rules
        .iter()
        .enumerate()
        .map(|(r, _)| {
            let n = Method::ALL.len();
            MethodSet::of(
                Method::ALL
                    .into_iter()
                    .filter(|m| per_method[r * n + m.index()].as_ref().is_none_or(|c| !c.is_empty())),
            )
        })
        .collect();
    let currencies = bitsets(per_method.iter().map(|c| c.as_deref()));
    let countries = bitsets(rules.iter().map(|r| r.countries.as_deref()));
    let can_cover: Vec<bool> = rules.iter().map(|r| r.rollout_percent.is_none_or(|p| p >= 100)).collect();
    let n = Method::ALL.len();
    (0..rules.len())
        .filter_map(|j| {
            (0..j)
                .find(|&i| {
                    can_cover[i]
                        && matched[i].covers(matched[j])
                        && matched[j]
                            .iter()
                            .all(|m| within(&currencies[i * n + m.index()], &currencies[j * n + m.index()]))
                        && within(&countries[i], &countries[j])
                        && rules[i].covers_rest(rules[j])
                })
                .map(|i| (j, i))
        })
        .collect()
}

/// `mine` (None = everything) contains every element of `theirs`.
fn subset<T: PartialEq>(mine: &Option<Vec<T>>, theirs: &Option<Vec<T>>) -> bool {
    match (mine, theirs) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => b.iter().all(|x| a.contains(x)),
    }
}

impl Target {
    /// Channels in the order to try them for this order id.
    pub fn order(&self, order_id: &str) -> Vec<ChannelIdx> {
        match self {
            Target::Ordered(v) => v.clone(),
            Target::Split { weighted, backups } => {
                let total: u64 = weighted.iter().map(|(_, w)| u64::from(*w)).sum();
                let mut pick = stable_hash(&[order_id.as_bytes()]) % total.max(1);
                let mut first = 0;
                for (i, (_, w)) in weighted.iter().enumerate() {
                    if pick < u64::from(*w) {
                        first = i;
                        break;
                    }
                    pick -= u64::from(*w);
                }
                let mut out = Vec::with_capacity(weighted.len() + backups.len());
                out.push(weighted[first].0);
                out.extend(weighted.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, (c, _))| *c));
                out.extend(backups.iter().copied());
                out
            }
        }
    }

    /// All channels named, in declaration order.
    pub fn channels(&self) -> Vec<ChannelIdx> {
        match self {
            Target::Ordered(v) => v.clone(),
            Target::Split { weighted, backups } => {
                weighted.iter().map(|(c, _)| *c).chain(backups.iter().copied()).collect()
            }
        }
    }
}

/// FNV-1a 64: stable across builds and platforms (rollouts must not reshuffle on upgrade).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hkd() -> Currency {
        Currency::parse("HKD").unwrap()
    }

    fn rule(name: &str, methods: &[Method], currencies: Option<Vec<Currency>>, target: Vec<usize>) -> Rule {
        Rule {
            name: name.into(),
            methods: MethodSet::of(methods.iter().copied()),
            currencies,
            amount: None,
            countries: None,
            metadata: vec![],
            rollout_percent: None,
            target: Target::Ordered(target),
            takes: vec![],
        }
    }

    fn facts<'a>(m: Method, c: Currency, amount: i64, md: &'a BTreeMap<String, String>) -> Facts<'a> {
        Facts {
            method: m,
            currency: c,
            amount_minor: amount,
            country: Some("HK"),
            metadata: md,
            customer_id: None,
            order_id: "o-1",
        }
    }

    #[test]
    fn first_match_wins_and_default_applies() {
        let usd = Currency::parse("USD").unwrap();
        let mut big = rule("big-hkd", &[Method::Visa], Some(vec![hkd()]), vec![1]);
        big.amount = Some(vec![AmountRange { currency: hkd(), min: Some(100_000), max: None }]);
        let r = Router::new(
            vec![big, rule("cards", &[Method::Visa, Method::Mastercard], None, vec![0, 1])],
            Some(Target::Ordered(vec![2])),
        );
        let md = BTreeMap::new();
        assert_eq!(r.evaluate(&facts(Method::Visa, hkd(), 200_000, &md)).unwrap().rule, "big-hkd");
        assert_eq!(r.evaluate(&facts(Method::Visa, hkd(), 100, &md)).unwrap().rule, "cards");
        assert_eq!(r.evaluate(&facts(Method::Visa, usd, 200_000, &md)).unwrap().channels, vec![0, 1]);
        let d = r.evaluate(&facts(Method::AlipayHk, hkd(), 1, &md)).unwrap();
        assert_eq!((d.rule, d.channels), ("default", vec![2]));
    }

    #[test]
    fn shadowed_agrees_with_covers_pair_by_pair() {
        // A deterministic mix of overlapping sets; rules whose currencies, countries,
        // amounts, metadata and rollouts nest or do not.
        let cur: Vec<Currency> = ["HKD", "USD", "CNY", "EUR"].iter().map(|c| Currency::parse(c).unwrap()).collect();
        let countries = ["HK", "CN", "US", "GB", "JP"];
        let mut x: u64 = 7;
        let mut next = |n: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let mut rules = Vec::new();
        for k in 0..300 {
            let ms: Vec<Method> = (0..=next(2)).map(|_| Method::ALL[next(3) as usize]).collect();
            let cs = (next(3) > 0).then(|| {
                let mut v: Vec<Currency> = (0..=next(3)).map(|_| cur[next(4) as usize]).collect();
                v.sort();
                v.dedup();
                v
            });
            let mut r = rule(&format!("r{k}"), &ms, cs.clone(), vec![0]);
            r.countries =
                (next(3) > 0).then(|| (0..=next(4)).map(|_| countries[next(5) as usize].to_string()).collect());
            if let (Some(cs), 0) = (&cs, next(4)) {
                r.amount = Some(
                    cs.iter()
                        .map(|c| AmountRange { currency: *c, min: Some(next(3) as i64 * 100), max: None })
                        .collect(),
                );
            }
            if next(5) == 0 {
                r.metadata = vec![("k".into(), format!("{}", next(2)))];
            }
            if next(6) == 0 {
                r.rollout_percent = Some(if next(2) == 0 { 50 } else { 100 });
            }
            // Channels of different kinds: what each takes.
            if next(3) == 0 {
                for _ in 0..=next(2) {
                    let m = MethodSet::of([Method::ALL[next(3) as usize]]);
                    let cs = if next(2) == 0 { None } else { Some(vec![cur[next(4) as usize]]) };
                    r.takes.push((m, cs));
                }
            }
            rules.push(r);
        }
        let refs: Vec<&Rule> = rules.iter().collect();
        let naive: Vec<(usize, usize)> =
            (0..rules.len()).filter_map(|j| (0..j).find(|&i| rules[i].covers(&rules[j])).map(|i| (j, i))).collect();
        assert!(naive.len() > 20 && naive.len() < 280, "a mix: {}", naive.len());
        assert_eq!(shadowed(&refs), naive);
    }

    #[test]
    fn metadata_country_and_rollout() {
        let mut web = rule("web", &[Method::Visa], None, vec![0]);
        web.metadata = vec![("channel".into(), "web".into())];
        web.countries = Some(vec!["HK".into()]);
        let mut half = rule("half", &[Method::Visa], None, vec![1]);
        half.rollout_percent = Some(50);
        let r = Router::new(vec![web, half], Some(Target::Ordered(vec![2])));
        let mut md = BTreeMap::new();
        md.insert("channel".to_string(), "web".to_string());
        assert_eq!(r.evaluate(&facts(Method::Visa, hkd(), 1, &md)).unwrap().rule, "web");
        let empty = BTreeMap::new();
        let mut hits = 0;
        for i in 0..1000 {
            let id = format!("order-{i}");
            let f = Facts { order_id: &id, ..facts(Method::Visa, hkd(), 1, &empty) };
            if r.evaluate(&f).unwrap().rule == "half" {
                hits += 1;
            }
        }
        assert!((400..600).contains(&hits), "rollout 50% hit {hits}/1000");
    }

    #[test]
    fn split_is_stable_and_weighted() {
        let t = Target::Split { weighted: vec![(0, 3), (1, 1)], backups: vec![2] };
        let first: Vec<usize> = (0..1000).map(|i| t.order(&format!("o{i}"))[0]).collect();
        let zeros = first.iter().filter(|c| **c == 0).count();
        assert!((650..850).contains(&zeros), "weight 3:1 gave {zeros}/1000");
        assert_eq!(t.order("same"), t.order("same"));
        assert_eq!(t.order("x").len(), 3);
        assert_eq!(*t.order("x").last().unwrap(), 2);
    }

    #[test]
    fn index_agrees_with_a_linear_scan() {
        let usd = Currency::parse("USD").unwrap();
        let mut rules = vec![];
        for i in 0..60 {
            let m = Method::ALL[i % 14];
            let mut r = rule(
                &format!("r{i}"),
                &[m],
                if i % 3 == 0 { None } else { Some(vec![if i % 2 == 0 { hkd() } else { usd }]) },
                vec![i],
            );
            if i % 4 == 0 {
                r.amount = r
                    .currencies
                    .as_ref()
                    .map(|cs| vec![AmountRange { currency: cs[0], min: Some(100), max: Some(5000) }]);
            }
            if i % 5 == 0 {
                r.countries = Some(vec!["CN".into()]);
            }
            rules.push(r);
        }
        let router = Router::new(rules.clone(), Some(Target::Ordered(vec![999])));
        let md = BTreeMap::new();
        for m in Method::ALL {
            for c in [hkd(), usd, Currency::parse("JPY").unwrap()] {
                for amount in [1, 100, 4999, 5001] {
                    for country in [Some("HK"), Some("CN"), None] {
                        let f = Facts { country, ..facts(m, c, amount, &md) };
                        let linear = rules.iter().find(|r| r.matches(&f)).map(|r| r.name.as_str()).unwrap_or("default");
                        assert_eq!(router.evaluate(&f).unwrap().rule, linear, "{m} {c} {amount} {country:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn coverage() {
        let broad = rule("a", &[Method::Visa, Method::Mastercard], None, vec![0]);
        let narrow = rule("b", &[Method::Visa], Some(vec![hkd()]), vec![1]);
        assert!(broad.covers(&narrow));
        assert!(!narrow.covers(&broad));
        let mut partial = broad.clone();
        partial.rollout_percent = Some(10);
        assert!(!partial.covers(&narrow));
    }
}
