//! Validation of request bodies into engine types. Every invalid field is reported at once;
//! messages name the field and never echo a token or card data.

use super::problem::{FieldError, Problem};
use crate::domain::{Currency, Method, Money, MAX_AMOUNT_MINOR};
use crate::engine::{Customer, NewPayment};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

const CREATE_FIELDS: &[&str] =
    &["amount", "currency", "method", "order_id", "customer", "payment_method_data", "return_url", "metadata"];
const CUSTOMER_FIELDS: &[&str] = &["id", "email", "phone", "country", "ip"];
/// Fields of a card itself, which paymux never takes (an app must send a PSP token).
const RAW_CARD_FIELDS: &[&str] =
    &["number", "card_number", "pan", "cvc", "cvv", "cvv2", "cvc2", "exp_month", "exp_year", "expiry", "card"];
/// Methods whose payment goes through a PSP token.
const TOKEN_METHODS: &[Method] =
    &[Method::Visa, Method::Mastercard, Method::Unionpay, Method::ApplePay, Method::GooglePay, Method::SamsungPay];

struct Errs(Vec<FieldError>);

impl Errs {
    /// A field named by the caller is echoed, unless the name holds a card number: then with
    /// its digits starred (an error body never carries one).
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(starred(&field.into()), message));
    }
}

/// `name` as it may be echoed: with its digits starred when it holds a card number.
fn starred(name: &str) -> String {
    if holds_card_number(name) {
        name.chars().map(|c| if decimal_digit(c).is_some() { '*' } else { c }).collect()
    } else {
        name.to_string()
    }
}

/// Parses JSON; distinguishes malformed JSON (400) from a JSON value of the wrong shape.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Problem> {
    if body.is_empty() {
        return Err(Problem::new(400, "malformed_json", "the request body is empty; send a JSON object"));
    }
    let v: Value = serde_json::from_slice::<Strict>(body).map(|s| s.0).map_err(|e| {
        Problem::new(
            400,
            "malformed_json",
            format!("invalid JSON at line {} column {}: {}", e.line(), e.column(), short(&e)),
        )
    })?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(Problem::validation(vec![FieldError::new("", "the body must be a JSON object")])),
    }
}

/// A JSON value that refuses repeated object keys: `{"amount": 1000, "amount": 2000}` is
/// ambiguous, and a payment must not be read as whichever came last.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(Strict(x)) = a.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = a.next_key::<String>()? {
            let Strict(v) = a.next_value()?;
            if m.insert(k.clone(), v).is_some() {
                return Err(serde::de::Error::custom(format!("duplicate key `{}`", starred(&k))));
            }
        }
        Ok(Value::Object(m))
    }
}

fn short(e: &serde_json::Error) -> String {
    let s = e.to_string();
    s.split(" at line ").next().unwrap_or(&s).to_string()
}

fn string<'a>(m: &'a Map<String, Value>, k: &str, errs: &mut Errs, max: usize, required: bool) -> Option<&'a str> {
    match m.get(k) {
        None | Some(Value::Null) if !required => None,
        None | Some(Value::Null) => {
            errs.add(k, "is required");
            None
        }
        Some(Value::String(s)) if s.is_empty() => {
            errs.add(k, "must not be empty");
            None
        }
        Some(Value::String(s)) if s.chars().count() > max => {
            errs.add(k, format!("must be at most {max} characters"));
            None
        }
        Some(Value::String(s)) if s.chars().any(char::is_control) => {
            errs.add(k, "must not contain control characters");
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errs.add(k, "must be a string");
            None
        }
    }
}

/// Validates an integer minor-unit amount.
fn amount(v: Option<&Value>, field: &str, errs: &mut Errs, required: bool) -> Option<i64> {
    match v {
        None | Some(Value::Null) if !required => None,
        None | Some(Value::Null) => {
            errs.add(field, "is required (integer minor units, e.g. 1999 for HKD 19.99)");
            None
        }
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                if i <= 0 {
                    errs.add(field, "must be greater than 0");
                    None
                } else if i > MAX_AMOUNT_MINOR {
                    errs.add(field, format!("must be at most {MAX_AMOUNT_MINOR} minor units"));
                    None
                } else {
                    Some(i)
                }
            } else if n.as_f64().is_some_and(|f| f <= 0.0) {
                // `-0`, `-1.5`, `-1e30`: zero or below first, whatever its form.
                errs.add(field, "must be greater than 0");
                None
            } else if n.as_u64().is_some() || n.as_f64().is_some_and(|f| f.fract() == 0.0 && f > i64::MAX as f64) {
                errs.add(field, format!("must be at most {MAX_AMOUNT_MINOR} minor units"));
                None
            } else {
                errs.add(field, "must be an integer number of minor units, not a decimal");
                None
            }
        }
        Some(_) => {
            errs.add(field, "must be an integer number of minor units");
            None
        }
    }
}

/// An email address as a receipt can be sent to: one `@`, a local part, a dotted domain, no
/// spaces (the full RFC 5322 grammar admits much that no PSP sends mail to).
fn email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    let labels_ok = domain.split('.').all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
    !local.is_empty()
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@')
        && domain.contains('.')
        && labels_ok
}

/// Whether `s` holds a card number: 13 to 19 digits in a row, as a scheme issues them (the
/// first digit 1–6: UATP, Mastercard, Amex/Diners/JCB, Visa, Mastercard, Discover/UnionPay),
/// that pass the Luhn check. Digits may be full-width or from another script, grouped by up
/// to eight punctuation or space characters ("4242 4242-4242.4242"), and run on into more
/// digits (an expiry date or a CVV typed after the number); a whole run of 13–19 digits that
/// passes the check counts too (a stray leading 0). A PSP token never holds one:
/// letters break a run, and its digits are too few or fail the check. (A random number of
/// 16 digits or more that starts a group with 1–6 reads as one a third to a half of the
/// time: fine for a token field, too often for an order id or a phone number.)
pub(crate) fn holds_card_number(s: &str) -> bool {
    // The digits of a run, and where each of its groups starts: a card number starts a run or
    // a group, never inside one.
    let (mut run, mut starts): (Vec<u8>, Vec<usize>) = (Vec::new(), vec![0]);
    let mut gap = 0;
    // A trailing letter ends the last run.
    for c in s.chars().chain(['x']) {
        if let Some(d) = decimal_digit(c) {
            if gap > 0 {
                starts.push(run.len());
            }
            run.push(d);
            gap = 0;
        } else if !c.is_alphanumeric() && !run.is_empty() && gap < MAX_GAP {
            gap += 1;
        } else {
            // Or the whole run, whatever it starts with (a stray leading digit).
            let whole = (13..=19).contains(&run.len()) && luhn(&run);
            if whole || starts.iter().any(|&i| card_number_at(&run[i..])) {
                return true;
            }
            (run, starts, gap) = (Vec::new(), vec![0], 0);
        }
    }
    false
}

/// Characters between two groups of digits (spaces, dashes, dots…) that still join them.
const MAX_GAP: usize = 8;

/// The zeros of Unicode's decimal digits (general category Nd), each the first of ten.
const DIGIT_ZEROS: [u32; 75] = [
    0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6, 0x0D66, 0x0DE6, 0x0E50,
    0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50,
    0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x10D40, 0x11066, 0x110F0,
    0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x116D0, 0x116DA, 0x11730, 0x118E0, 0x11950,
    0x11BF0, 0x11C50, 0x11D50, 0x11DA0, 0x11F50, 0x16130, 0x16A60, 0x16AC0, 0x16B50, 0x16D70, 0x1CCF0, 0x1D7CE,
    0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E4F0, 0x1E5F1, 0x1E950, 0x1FBF0,
];

/// The value of a decimal digit of any script (ASCII, full-width, Arabic-Indic, Tamil, the
/// mathematical alphabets' …).
fn decimal_digit(c: char) -> Option<u8> {
    if let Some(d) = c.to_digit(10) {
        return Some(d as u8);
    }
    let c = c as u32;
    if c < DIGIT_ZEROS[0] {
        return None;
    }
    DIGIT_ZEROS.iter().find(|&&z| (z..z + 10).contains(&c)).map(|z| (c - z) as u8)
}

/// Whether the first 13–19 of `digits` read as a card number (schemes issue them starting
/// with 1, UATP, to 6).
fn card_number_at(digits: &[u8]) -> bool {
    digits.first().is_some_and(|d| (1..=6).contains(d)) && (13..=digits.len().min(19)).any(|len| luhn(&digits[..len]))
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            match i % 2 {
                0 => d,
                _ if d * 2 > 9 => d * 2 - 9,
                _ => d * 2,
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

use crate::domain::is_http_url as url;

/// Validates `POST /v1/payments`.
pub fn create(m: &Map<String, Value>) -> Result<NewPayment, Problem> {
    let mut e = Errs(vec![]);
    for k in m.keys() {
        if !CREATE_FIELDS.contains(&k.as_str()) {
            e.add(k.clone(), "unknown field");
        }
    }
    let amt = amount(m.get("amount"), "amount", &mut e, true);
    let currency = string(m, "currency", &mut e, 3, true).and_then(|c| match Currency::parse(c) {
        Ok(c) => Some(c),
        Err(_) => {
            let hint = if Currency::parse(&c.to_ascii_uppercase()).is_ok() { " (use upper case)" } else { "" };
            e.add("currency", format!("must be an ISO 4217 alpha-3 currency code{hint}"));
            None
        }
    });
    let method = string(m, "method", &mut e, 32, true).and_then(|s| match Method::parse(s) {
        Some(x) => Some(x),
        None => {
            e.add("method", format!("must be one of: {}", Method::names()));
            None
        }
    });
    let order_id = string(m, "order_id", &mut e, 128, true);
    let customer = match m.get("customer") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => {
            for k in c.keys() {
                if !CUSTOMER_FIELDS.contains(&k.as_str()) {
                    e.add(format!("customer.{k}"), "unknown field");
                }
            }
            let mut sub = Errs(vec![]);
            let cu = Customer {
                id: string(c, "id", &mut sub, 128, false).map(String::from),
                email: string(c, "email", &mut sub, 254, false).map(String::from),
                phone: string(c, "phone", &mut sub, 32, false).map(String::from),
                country: string(c, "country", &mut sub, 2, false).map(String::from),
                ip: string(c, "ip", &mut sub, 45, false).map(String::from),
            };
            if cu.email.as_deref().is_some_and(|s| !email(s)) {
                sub.add("email", "must be an email address (local@domain.tld)");
            }
            if cu.country.as_deref().is_some_and(|s| s.len() != 2 || !s.chars().all(|c| c.is_ascii_uppercase())) {
                sub.add("country", "must be an ISO 3166-1 alpha-2 code in upper case (e.g. HK)");
            }
            if cu.ip.as_deref().is_some_and(|s| s.parse::<std::net::IpAddr>().is_err()) {
                sub.add("ip", "must be an IPv4 or IPv6 address");
            }
            if cu.phone.as_deref().is_some_and(|s| !s.chars().all(|c| c.is_ascii_digit() || "+-() ".contains(c))) {
                sub.add("phone", "must contain only digits, spaces and + - ( )");
            }
            for fe in sub.0 {
                e.add(format!("customer.{}", fe.field), fe.message);
            }
            Some(cu)
        }
        Some(_) => {
            e.add("customer", "must be an object");
            None
        }
    };
    let pmd = match m.get("payment_method_data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(o),
        Some(_) => {
            e.add("payment_method_data", "must be an object");
            None
        }
    };
    if let Some(o) = pmd {
        // paymux takes tokens, never the card itself: raw card fields are refused by name
        // (their values are never echoed), as is anything else the method does not take.
        for k in o.keys() {
            let allowed = match method {
                Some(m) if TOKEN_METHODS.contains(&m) => &["token"][..],
                Some(Method::AlipayHk) => &["terminal_type", "os_type"][..],
                _ => continue,
            };
            if RAW_CARD_FIELDS.contains(&k.to_ascii_lowercase().as_str()) {
                e.add(
                    format!("payment_method_data.{k}"),
                    "raw card data is never accepted: tokenize the card with the PSP and send its `token`",
                );
            } else if !allowed.contains(&k.as_str()) {
                e.add(format!("payment_method_data.{k}"), format!("unknown field (expected: {})", allowed.join(", ")));
            }
        }
    }
    if let Some(method) = method {
        if TOKEN_METHODS.contains(&method) {
            match pmd.and_then(|o| o.get("token")) {
                Some(Value::String(t)) if holds_card_number(t) => e.add(
                    "payment_method_data.token",
                    "holds a card number: send the PSP's token for the card, never the card number",
                ),
                Some(Value::String(t)) if !t.is_empty() && t.len() <= 255 && !t.chars().any(char::is_control) => {}
                Some(_) => e.add("payment_method_data.token", "must be a non-empty string of at most 255 bytes"),
                None => e.add(
                    "payment_method_data.token",
                    format!("is required for `{method}`: the PSP token of the card or wallet"),
                ),
            }
        }
        if method == Method::AlipayHk {
            if let Some(o) = pmd {
                for (k, allowed) in
                    [("terminal_type", &["WEB", "WAP", "APP"][..]), ("os_type", &["IOS", "ANDROID"][..])]
                {
                    match o.get(k) {
                        None => {}
                        Some(Value::String(s)) if allowed.contains(&s.as_str()) => {}
                        Some(_) => {
                            e.add(format!("payment_method_data.{k}"), format!("must be one of: {}", allowed.join(", ")))
                        }
                    }
                }
            }
            if m.get("return_url").is_none_or(Value::is_null) {
                e.add("return_url", "is required for `alipay_hk`: the payer returns there after approving");
            }
        }
    }
    let return_url = string(m, "return_url", &mut e, 2048, false);
    if return_url.is_some_and(|u| !url(u)) {
        e.add(
            "return_url",
            "must be an absolute http(s) URL, with spaces and other characters outside RFC 3986 percent-encoded",
        );
    }
    let mut metadata = BTreeMap::new();
    match m.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            if o.len() > 50 {
                e.add("metadata", "must have at most 50 keys");
            }
            for (k, v) in o {
                if !crate::domain::is_metadata_key(k) {
                    e.add(
                        format!("metadata.{k}"),
                        "keys must be 1-40 characters, without brackets or control characters, and must not start with `paymux_`",
                    );
                }
                match v {
                    // Line breaks and tabs are text; other control characters (NUL, escapes) are not.
                    Value::String(s) if s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) => e.add(
                        format!("metadata.{k}"),
                        "values must not contain control characters other than line breaks and tabs",
                    ),
                    Value::String(s) if s.chars().count() <= 500 => {
                        metadata.insert(k.clone(), s.clone());
                    }
                    Value::String(_) => e.add(format!("metadata.{k}"), "values must be at most 500 characters"),
                    _ => e.add(format!("metadata.{k}"), "values must be strings"),
                }
            }
        }
        Some(_) => e.add("metadata", "must be an object of string values"),
    }
    if !e.0.is_empty() {
        return Err(Problem::validation(e.0));
    }
    let (Some(a), Some(c), Some(method), Some(order_id)) = (amt, currency, method, order_id) else {
        return Err(Problem::validation(vec![]));
    };
    let money = Money::new(a, c).map_err(|x| Problem::validation(vec![FieldError::new("amount", x.to_string())]))?;
    Ok(NewPayment {
        money,
        method,
        order_id: order_id.to_string(),
        customer,
        payment_method_data: pmd.map(|o| Value::Object(o.clone())),
        return_url: return_url.map(String::from),
        metadata,
    })
}

/// A validated refund request.
#[derive(Debug)]
pub struct NewRefund {
    pub amount: Option<i64>,
    pub reason: Option<String>,
}

/// Validates `POST /v1/payments/{id}/refunds` (an empty body refunds everything left).
pub fn refund(body: &[u8]) -> Result<NewRefund, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(NewRefund { amount: None, reason: None });
    }
    let m = parse_object(body)?;
    let mut e = Errs(vec![]);
    for k in m.keys() {
        if k != "amount" && k != "reason" {
            e.add(k.clone(), "unknown field");
        }
    }
    let amount = amount(m.get("amount"), "amount", &mut e, false);
    let reason = string(&m, "reason", &mut e, 500, false).map(String::from);
    if !e.0.is_empty() {
        return Err(Problem::validation(e.0));
    }
    Ok(NewRefund { amount, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: &str) -> Vec<String> {
        match create(&parse_object(body.as_bytes()).unwrap()) {
            Ok(_) => vec![],
            Err(p) => p.errors.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn every_digit_block_is_ten_numeric_characters() {
        for z in DIGIT_ZEROS {
            for d in 0..10 {
                let c = char::from_u32(z + d).unwrap();
                assert!(c.is_numeric() && c.is_alphanumeric(), "{:x}", z + d);
                assert_eq!(decimal_digit(c), Some(d as u8));
            }
        }
        // A duplicate key holding a card number is not echoed either.
        let e = parse_object(br#"{"4242424242424242":1,"4242424242424242":2}"#).unwrap_err();
        assert!(!e.detail.contains("4242"), "{}", e.detail);
    }

    #[test]
    fn accepts_a_card_payment() {
        let ok = r#"{"amount":1999,"currency":"HKD","method":"visa","order_id":"o1","payment_method_data":{"token":"pm_card_visa"},"metadata":{"a":"b"}}"#;
        assert!(fields(ok).is_empty());
    }

    #[test]
    fn card_data_is_refused_and_never_echoed() {
        for pan in [
            "4000056655665556",
            "4242 4242 4242 4242",
            "5555-5555-5555-4444",
            "tok_4000056655665556",
            "4242 4242 4242 4242 123",
            "4242424242424242 12/30",
            "4242.4242.4242.4242",
            "4242/4242/4242/4242",
            "4242_4242_4242_4242",
            "4242 - 4242 - 4242 - 4242",
            "4242424242424242123",
            "\u{ff14}\u{ff12}\u{ff14}\u{ff12}\u{ff14}\u{ff12}\u{ff14}\u{ff12}\u{ff14}\u{ff12}\u{ff14}\u{ff12}\u{ff14}\u{ff12}\u{ff14}\u{ff12}",
            "378282246310005",
            "6200000000000005",
            "04242424242424242",
            "4242    4242 -- 4242    4242",
            "135412345678911",
            "\u{0bec}\u{0be8}\u{0bec}\u{0be8}\u{0bec}\u{0be8}\u{0bec}\u{0be8}\u{0bec}\u{0be8}\u{0bec}\u{0be8}\u{0bec}\u{0be8}\u{0bec}\u{0be8}",
            "\u{1d7fa}\u{1d7f8}\u{1d7fa}\u{1d7f8}\u{1d7fa}\u{1d7f8}\u{1d7fa}\u{1d7f8}\u{1d7fa}\u{1d7f8}\u{1d7fa}\u{1d7f8}\u{1d7fa}\u{1d7f8}\u{1d7fa}\u{1d7f8}",
        ] {
            assert!(holds_card_number(pan), "{pan}");
            let body = format!(
                r#"{{"amount":1999,"currency":"HKD","method":"visa","order_id":"o1","payment_method_data":{{"token":"{pan}"}}}}"#
            );
            let p = create(&parse_object(body.as_bytes()).unwrap()).unwrap_err();
            assert_eq!(p.errors[0].field, "payment_method_data.token");
            assert!(!serde_json::to_string(&p.errors).unwrap().contains("4444"));
        }
        // Tokens, and digit runs that are not card numbers (too short, too long, fail Luhn).
        for ok in [
            "pm_card_visa",
            "tok_visa",
            "pm_1Nx9ZY2eZvKYlo2C",
            "4111111111111112",
            "424242424242",
            "8415718415172200",
            "tok_1Pq2x8aB3cD4eF5g",
        ] {
            assert!(!holds_card_number(ok), "{ok}");
        }
        // Nor in a field's name.
        let named = r#"{"amount":1999,"currency":"HKD","method":"visa","order_id":"o1","payment_method_data":{"token":"pm_card_visa"},"4242424242424242":1,"metadata":{"paymux_4242 4242 4242 4242":"v"}}"#;
        let p = create(&parse_object(named.as_bytes()).unwrap()).unwrap_err();
        let f: Vec<_> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(f, ["****************", "metadata.paymux_**** **** **** ****"], "{:?}", p.errors);
        let raw = r#"{"amount":1999,"currency":"HKD","method":"visa","order_id":"o1","payment_method_data":{"token":"pm_card_visa","number":"4242424242424242","cvc":"123","brand":"x"}}"#;
        let p = create(&parse_object(raw.as_bytes()).unwrap()).unwrap_err();
        let f: Vec<_> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(f, ["payment_method_data.brand", "payment_method_data.cvc", "payment_method_data.number"]);
        assert!(p.errors[1].message.contains("raw card data"), "{:?}", p.errors);
        assert!(!serde_json::to_string(&p.errors).unwrap().contains("4242"));
    }

    #[test]
    fn metadata_takes_text_not_control_characters() {
        let body = |md: &str| {
            format!(
                r#"{{"amount":1999,"currency":"HKD","method":"visa","order_id":"o1","payment_method_data":{{"token":"pm_card_visa"}},"metadata":{md}}}"#
            )
        };
        assert!(fields(&body(r#"{"note":"line one\nline two\tend"}"#)).is_empty());
        assert_eq!(fields(&body(r#"{"a":"x\u0000y"}"#)), ["metadata.a"]);
        assert_eq!(fields(&body(r#"{"a\nb":"x"}"#)), ["metadata.a\nb"]);
    }

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        for ok in ["a@b.co", "first.last+tag@mail.example.hk"] {
            assert!(email(ok), "{ok}");
        }
        for bad in ["@", "a@", "@b.co", "a@b", "a b@c.d", "a@@b.co", "a@b..co", "a@-b.co", "not an email@@"] {
            assert!(!email(bad), "{bad}");
        }
    }

    #[test]
    fn return_urls_are_absolute_rfc_3986_http_urls() {
        for ok in
            ["https://shop.example.hk/done?x=1%202", "http://127.0.0.1:8080/r#top", "https://a.hk/p?q=a,b;c=d&e=~"]
        {
            assert!(url(ok), "{ok}");
        }
        for bad in [
            "https://shop.example.hk/done?x=1 2",
            "https://a.hk/\u{e9}t\u{e9}",
            "https://a.hk/<x>",
            "https://a.hk/{x}",
            "https://a.hk/\t",
            "ftp://a.hk/",
            "/done",
            "https://",
        ] {
            assert!(!url(bad), "{bad}");
        }
    }

    #[test]
    fn reports_every_bad_field() {
        let bad = r#"{"amount":0,"currency":"hkd","method":"cash","order_id":"","extra":1,"customer":{"country":"hk","x":1},"metadata":{"paymux_x":"1","n":2}}"#;
        let f = fields(bad);
        for want in [
            "extra",
            "amount",
            "currency",
            "method",
            "order_id",
            "customer.x",
            "customer.country",
            "metadata.paymux_x",
            "metadata.n",
        ] {
            assert!(f.contains(&want.to_string()), "missing {want} in {f:?}");
        }
    }

    #[test]
    fn repeated_keys_are_malformed_not_last_wins() {
        for body in [
            r#"{"amount":1000,"amount":2000,"currency":"HKD"}"#,
            r#"{"metadata":{"a":"1","a":"2"}}"#,
            r#"{"customer":[{"id":"x","id":"y"}]}"#,
        ] {
            let p = parse_object(body.as_bytes()).unwrap_err();
            assert_eq!((p.status, p.code), (400, "malformed_json"), "{body}");
            assert!(p.detail.contains("duplicate key"), "{}", p.detail);
        }
        let v = parse_object(br#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}]}"#).unwrap();
        assert_eq!(Value::Object(v), serde_json::json!({"a": [1, -2, 3.5, "x", null, true, {"b": {}}]}));
    }

    #[test]
    fn amount_edges() {
        let mk = |a: &str| {
            fields(&format!(
                r#"{{"amount":{a},"currency":"HKD","method":"alipay_hk","order_id":"o","return_url":"https://x/r"}}"#
            ))
        };
        assert_eq!(mk("-5"), vec!["amount"]);
        assert_eq!(mk("10.5"), vec!["amount"]);
        assert_eq!(mk("\"100\""), vec!["amount"]);
        assert_eq!(mk("1000000000000001"), vec!["amount"]);
        assert_eq!(mk("99999999999999999999999"), vec!["amount"]);
        assert!(mk("1000000000000000").is_empty());
        // Zero or below says so, whatever its form (serde reads `-0` as a float).
        let said = |a: &str| {
            let body = format!(r#"{{"amount":{a},"currency":"HKD","method":"visa","order_id":"o"}}"#);
            match create(&parse_object(body.as_bytes()).unwrap()) {
                Ok(_) => String::new(),
                Err(p) => p.errors.into_iter().find(|e| e.field == "amount").map(|e| e.message).unwrap_or_default(),
            }
        };
        for a in ["-0", "0", "-1.5", "-1e30", "-99999999999999999999999"] {
            assert_eq!(said(a), "must be greater than 0", "{a}");
        }
        assert_eq!(said("10.5"), "must be an integer number of minor units, not a decimal");
    }

    #[test]
    fn malformed_json_is_400() {
        assert_eq!(parse_object(b"{\"amount\":").unwrap_err().status, 400);
        assert_eq!(parse_object(b"[]").unwrap_err().status, 422);
    }
}
