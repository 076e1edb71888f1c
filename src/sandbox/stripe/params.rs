//! Reading Stripe request parameters the way Stripe checks them: the allowed names per
//! endpoint, integers, lower-case currencies, booleans, enums, metadata, lists.

use super::model::ApiError;
use crate::domain::Currency;
use crate::sandbox::form::Params;
use serde_json::Value;
use std::collections::BTreeMap;

pub(super) const CREATE_PARAMS: &[&str] = &[
    "amount",
    "amount_details",
    "application_fee_amount",
    "automatic_payment_methods",
    "capture_method",
    "confirm",
    "confirmation_method",
    "confirmation_token",
    "currency",
    "customer",
    "description",
    "error_on_requires_action",
    "excluded_payment_method_types",
    "expand",
    "hooks",
    "mandate",
    "mandate_data",
    "metadata",
    "off_session",
    "on_behalf_of",
    "payment_details",
    "payment_method",
    "payment_method_configuration",
    "payment_method_data",
    "payment_method_options",
    "payment_method_types",
    "radar_options",
    "receipt_email",
    "return_url",
    "setup_future_usage",
    "shipping",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "transfer_data",
    "transfer_group",
    "use_stripe_sdk",
];

/// What `POST /v1/payment_intents/:id` takes.
pub(super) const UPDATE_PARAMS: &[&str] = &[
    "amount",
    "capture_method",
    "currency",
    "customer",
    "description",
    "expand",
    "metadata",
    "payment_method",
    "payment_method_data",
    "payment_method_options",
    "payment_method_types",
    "receipt_email",
    "setup_future_usage",
    "shipping",
    "statement_descriptor",
    "statement_descriptor_suffix",
];

/// What an update may still change once a PaymentIntent has left the editable statuses.
pub(super) const UPDATE_ANY_STATUS: &[&str] = &["description", "expand", "metadata", "receipt_email", "shipping"];

pub(super) const CONFIRM_PARAMS: &[&str] = &[
    "capture_method",
    "confirmation_token",
    "error_on_requires_action",
    "expand",
    "mandate",
    "mandate_data",
    "off_session",
    "payment_details",
    "payment_method",
    "payment_method_data",
    "payment_method_options",
    "payment_method_types",
    "radar_options",
    "receipt_email",
    "return_url",
    "setup_future_usage",
    "shipping",
    "use_stripe_sdk",
];

pub(super) const REFUND_PARAMS: &[&str] = &[
    "amount",
    "charge",
    "currency",
    "customer",
    "expand",
    "instructions_email",
    "metadata",
    "origin",
    "payment_intent",
    "reason",
    "refund_application_fee",
    "reverse_transfer",
];

/// Stripe's minimum charge per presentment currency, in minor units (its "minimum and maximum
/// charge amounts" table); other currencies are checked against the settlement currency, which
/// the simulator does not model.
const MINIMUM_CHARGE: &[(&str, i64, u32)] = &[
    ("usd", 50, 2),
    ("aed", 200, 2),
    ("aud", 50, 2),
    ("bgn", 100, 2),
    ("brl", 50, 2),
    ("cad", 50, 2),
    ("chf", 50, 2),
    ("czk", 1500, 2),
    ("dkk", 250, 2),
    ("eur", 50, 2),
    ("gbp", 30, 2),
    ("hkd", 400, 2),
    ("huf", 17500, 2),
    ("inr", 50, 2),
    ("jpy", 50, 0),
    ("mxn", 1000, 2),
    ("myr", 200, 2),
    ("nok", 300, 2),
    ("nzd", 50, 2),
    ("pln", 200, 2),
    ("ron", 200, 2),
    ("sek", 300, 2),
    ("sgd", 50, 2),
    ("thb", 1000, 2),
];

/// Currencies with three decimals, which Stripe charges in multiples of 10 minor units only
/// (card networks settle them to two).
const WHOLE_TENS: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// Refuses an amount Stripe would not charge or refund in `currency`: not a multiple of 10
/// in a three-decimal currency; a fraction of a króna in ISK, which Stripe keeps two-decimal
/// (100 = 1 króna) though card networks take whole krónur only.
pub(super) fn check_steps(amount: i64, currency: &str) -> Result<(), ApiError> {
    if WHOLE_TENS.contains(&currency) && amount % 10 != 0 {
        return Err(ApiError::invalid(
            format!("Amounts in {currency} must be a multiple of 10 in the smallest currency unit (its last digit 0)."),
            Some("amount"),
            Some("parameter_invalid_integer"),
        ));
    }
    if currency == "isk" && amount % 100 != 0 {
        return Err(ApiError::invalid(
            "Invalid amount. Currency ISK has become effectively zero-decimal and charged amounts must be evenly \
divisible by 100. See https://stripe.com/docs/currencies#special-cases for more information.",
            Some("amount"),
            Some("invalid_charge_amount_no_decimal_compatible"),
        ));
    }
    Ok(())
}

/// Refuses an amount Stripe would not charge in `currency`: in steps it does not take (see
/// [`check_steps`]), or below its minimum charge (`amount_too_small`).
pub(super) fn check_amount(amount: i64, currency: &str) -> Result<(), ApiError> {
    check_steps(amount, currency)?;
    match MINIMUM_CHARGE.iter().find(|(c, _, _)| *c == currency) {
        Some(&(c, min, exp)) if amount < min => {
            let unit = 10i64.pow(exp);
            let major = if exp == 0 {
                min.to_string()
            } else {
                format!("{}.{:0width$}", min / unit, min % unit, width = exp as usize)
            };
            Err(ApiError::invalid(
                format!("Amount must be at least {major} {c}"),
                Some("amount"),
                Some("amount_too_small"),
            ))
        }
        _ => Ok(()),
    }
}

/// A scalar parameter; a hash or list where a string belongs is an error.
pub(super) fn scalar<'a>(p: &'a Params, name: &str) -> Result<Option<&'a str>, ApiError> {
    match p.get(&[name]) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid(format!("Invalid string: {name} must be a string"), Some(name), None)),
    }
}

pub(super) fn allow(p: &Params, allowed: &[&str]) -> Result<(), ApiError> {
    match p.unknown(allowed) {
        Some(k) => Err(ApiError::unknown(k)),
        None => Ok(()),
    }
}

pub(super) fn amount_param(p: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(s) = scalar(p, name)? else { return Ok(None) };
    let n: i64 = s.parse().map_err(|_| {
        ApiError::invalid(format!("Invalid integer: {s}"), Some(name), Some("parameter_invalid_integer"))
    })?;
    if n < 1 {
        return Err(ApiError::invalid(
            "This value must be greater than or equal to 1.",
            Some(name),
            Some("parameter_invalid_integer"),
        ));
    }
    if n > 99_999_999 {
        return Err(ApiError::invalid(
            "Amount must be no more than 99999999 in the smallest currency unit.",
            Some(name),
            Some("amount_too_large"),
        ));
    }
    Ok(Some(n))
}

pub(super) fn currency_param(p: &Params) -> Result<String, ApiError> {
    let s = scalar(p, "currency")?.ok_or_else(|| ApiError::missing("currency"))?;
    let known =
        s.len() == 3 && s.bytes().all(|b| b.is_ascii_lowercase()) && Currency::parse(&s.to_ascii_uppercase()).is_ok();
    if known {
        return Ok(s.to_string());
    }
    let all: Vec<String> = Currency::all().map(|c| c.code().to_ascii_lowercase()).collect();
    Err(ApiError::invalid(
        format!("Invalid currency: {s}. Stripe currently supports these currencies: {}", all.join(", ")),
        Some("currency"),
        None,
    ))
}

pub(super) fn bool_param(p: &Params, name: &str) -> Result<Option<bool>, ApiError> {
    match scalar(p, name)? {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(s) => Err(ApiError::invalid(format!("Invalid boolean: {s}"), Some(name), None)),
    }
}

pub(super) fn one_of(p: &Params, name: &str, allowed: &[&str]) -> Result<Option<String>, ApiError> {
    match scalar(p, name)? {
        None => Ok(None),
        Some(s) if allowed.contains(&s) => Ok(Some(s.to_string())),
        Some(_) => {
            let (last, rest) = allowed.split_last().unwrap_or((&"", &[]));
            Err(ApiError::invalid(
                format!("Invalid {name}: must be one of {}, or {last}", rest.join(", ")),
                Some(name),
                None,
            ))
        }
    }
}

pub(super) fn metadata_param(p: &Params) -> Result<BTreeMap<String, String>, ApiError> {
    let pairs = p.hash("metadata").map_err(|m| ApiError::invalid(m, Some("metadata"), None))?.unwrap_or_default();
    let mut out = BTreeMap::new();
    for (k, v) in pairs.into_iter().filter(|(_, v)| !v.is_empty()) {
        if k.chars().count() > 40 || v.chars().count() > 500 {
            return Err(ApiError::invalid(
                "Metadata keys can be up to 40 characters long and values up to 500 characters long.",
                Some(&format!("metadata[{k}]")),
                None,
            ));
        }
        out.insert(k, v);
    }
    if out.len() > 50 {
        return Err(ApiError::invalid("You can have up to 50 metadata keys.", Some("metadata"), None));
    }
    Ok(out)
}

/// Applies `metadata[...]` of an update: keys merge in, an empty value removes its key, and
/// `metadata=""` clears them all (Stripe's rules).
pub(super) fn merge_metadata(p: &Params, into: &mut BTreeMap<String, String>) -> Result<(), ApiError> {
    if scalar(p, "metadata").ok().flatten() == Some("") {
        into.clear();
        return Ok(());
    }
    let pairs = p.hash("metadata").map_err(|m| ApiError::invalid(m, Some("metadata"), None))?.unwrap_or_default();
    let mut merged = into.clone();
    for (k, v) in pairs {
        if v.is_empty() {
            merged.remove(&k);
        } else {
            merged.insert(k, v);
        }
    }
    // The same limits as on create.
    let hash = merged.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
    let checked = Params([("metadata".to_string(), Value::Object(hash))].into_iter().collect());
    *into = metadata_param(&checked)?;
    Ok(())
}

pub(super) fn three_ds_param(p: &Params) -> Result<Option<String>, ApiError> {
    const NAME: &str = "payment_method_options[card][request_three_d_secure]";
    match p.get(&["payment_method_options", "card", "request_three_d_secure"]) {
        None => Ok(None),
        Some(Value::String(s)) if ["automatic", "any", "challenge"].contains(&s.as_str()) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(
            format!("Invalid {NAME}: must be one of automatic, any, or challenge"),
            Some(NAME),
            None,
        )),
    }
}

pub(super) fn payment_method_types(p: &Params) -> Result<Option<Vec<String>>, ApiError> {
    let types = p.list("payment_method_types").map_err(|m| ApiError::invalid(m, Some("payment_method_types"), None))?;
    if let Some(t) = types.as_ref().and_then(|t| t.iter().find(|t| t.as_str() != "card")) {
        return Err(ApiError::invalid(
            format!("The payment method type \"{t}\" is invalid. The sandbox simulates card payments only."),
            Some("payment_method_types"),
            Some("payment_method_invalid_parameter"),
        ));
    }
    Ok(types)
}

/// Whether the payer is absent from a confirmation (`off_session`: a boolean, or Stripe's
/// `one_off` / `recurring`) or the app asked to fail rather than wait for them
/// (`error_on_requires_action`): a payment needing authentication then fails.
pub(super) fn no_action_param(p: &Params) -> Result<bool, ApiError> {
    let off_session = match scalar(p, "off_session")? {
        None | Some("false") => false,
        Some("true" | "one_off" | "recurring") => true,
        Some(s) => {
            return Err(ApiError::invalid(
                format!("Invalid off_session: {s}. Must be a boolean, one_off, or recurring"),
                Some("off_session"),
                None,
            ))
        }
    };
    Ok(off_session || bool_param(p, "error_on_requires_action")?.unwrap_or(false))
}

pub(super) fn limit_param(p: &Params) -> Result<usize, ApiError> {
    match scalar(p, "limit")? {
        None => Ok(10),
        Some(s) => match s.parse::<usize>() {
            Ok(n @ 1..=100) => Ok(n),
            _ => Err(ApiError::invalid(
                "This value must be greater than or equal to 1 and less than or equal to 100.",
                Some("limit"),
                None,
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::form;

    #[test]
    fn parameter_checks_match_stripe() {
        let p = form::parse(b"amount=-5&currency=HKD&confirm=yes&capture_method=later").unwrap();
        assert_eq!(amount_param(&p, "amount").unwrap_err().error["code"], "parameter_invalid_integer");
        assert_eq!(currency_param(&p).unwrap_err().error["param"], "currency");
        assert!(bool_param(&p, "confirm").is_err());
        let e = one_of(&p, "capture_method", &["automatic", "automatic_async", "manual"]).unwrap_err();
        assert_eq!(e.error["message"], "Invalid capture_method: must be one of automatic, automatic_async, or manual");
        let p = form::parse(b"amount=100000000&currency=hkd").unwrap();
        assert_eq!(amount_param(&p, "amount").unwrap_err().error["code"], "amount_too_large");
        assert_eq!(currency_param(&p).unwrap(), "hkd");
        let small = check_amount(399, "hkd").unwrap_err().error;
        assert_eq!(
            (small["code"].as_str(), small["message"].as_str()),
            (Some("amount_too_small"), Some("Amount must be at least 4.00 hkd"))
        );
        assert_eq!(check_amount(49, "jpy").unwrap_err().error["message"], "Amount must be at least 50 jpy");
        assert!(check_amount(400, "hkd").is_ok() && check_amount(10, "kwd").is_ok());
        assert_eq!(check_amount(1235, "kwd").unwrap_err().error["param"], "amount");
        assert_eq!(check_amount(150, "isk").unwrap_err().error["code"], "invalid_charge_amount_no_decimal_compatible");
        assert!(check_amount(500_000, "isk").is_ok());
        let p = form::parse(b"amount[x]=1").unwrap();
        assert!(amount_param(&p, "amount").is_err());
        assert_eq!(ApiError::unknown("foo").error["code"], "parameter_unknown");
    }
}
