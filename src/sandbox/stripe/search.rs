//! The subset of Stripe's search query language the simulator understands: clauses joined by
//! ` AND `, each `metadata['key']:'value'` (either quote style), or `status:`, `currency:`,
//! `customer:` / `amount:` equality. Anything else is refused, so a query the sandbox cannot
//! answer never silently matches nothing.

/// One equality clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Clause {
    Metadata(String, String),
    Field(String, String),
}

/// Fields the simulator can search PaymentIntents by (besides metadata).
const FIELDS: &[&str] = &["status", "currency", "customer", "amount"];

fn quoted(s: &str) -> Result<(String, &str), String> {
    let mut chars = s.char_indices();
    let q = match chars.next() {
        Some((_, c @ ('\'' | '"'))) => c,
        _ => return Err(format!("expected a quoted string at `{s}`")),
    };
    let mut out = String::new();
    let mut escaped = false;
    for (i, c) in chars {
        match (escaped, c) {
            (true, c) => {
                out.push(c);
                escaped = false;
            }
            (false, '\\') => escaped = true,
            (false, c) if c == q => return Ok((out, &s[i + c.len_utf8()..])),
            (false, c) => out.push(c),
        }
    }
    Err(format!("unterminated string at `{s}`"))
}

fn value(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.starts_with('\'') || s.starts_with('"') {
        let (v, rest) = quoted(s)?;
        if !rest.trim().is_empty() {
            return Err(format!("unexpected `{rest}` after a value"));
        }
        return Ok(v);
    }
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
        return Ok(s.to_string());
    }
    Err(format!("invalid value `{s}`"))
}

fn clause(s: &str) -> Result<Clause, String> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix("metadata[") {
        let (key, rest) = quoted(rest)?;
        let rest = rest.strip_prefix("]:").ok_or_else(|| format!("expected `]:` after metadata key in `{s}`"))?;
        return Ok(Clause::Metadata(key, value(rest)?));
    }
    let (field, v) = s.split_once(':').ok_or_else(|| format!("expected `field:value`, got `{s}`"))?;
    if !FIELDS.contains(&field) {
        return Err(format!("the sandbox cannot search by `{field}` (supported: metadata, {})", FIELDS.join(", ")));
    }
    Ok(Clause::Field(field.to_string(), value(v)?))
}

/// Parses a query into clauses that must all hold.
pub(crate) fn parse(query: &str) -> Result<Vec<Clause>, String> {
    if query.trim().is_empty() {
        return Err("the query is empty".into());
    }
    if query.contains(" OR ") {
        return Err("the sandbox does not support OR in search queries".into());
    }
    query.split(" AND ").map(clause).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metadata_equality_both_quote_styles() {
        assert_eq!(
            parse("metadata['paymux_attempt']:'pay_1-a1'").unwrap(),
            vec![Clause::Metadata("paymux_attempt".into(), "pay_1-a1".into())]
        );
        assert_eq!(
            parse("metadata[\"order id\"]:\"o 1\" AND status:'succeeded' AND amount:1000").unwrap(),
            vec![
                Clause::Metadata("order id".into(), "o 1".into()),
                Clause::Field("status".into(), "succeeded".into()),
                Clause::Field("amount".into(), "1000".into()),
            ]
        );
        assert_eq!(parse(r"metadata['k']:'it\'s'").unwrap(), vec![Clause::Metadata("k".into(), "it's".into())]);
    }

    #[test]
    fn refuses_what_it_cannot_answer() {
        for bad in [
            "",
            "metadata['k']:'v' OR status:'x'",
            "description~'x'",
            "metadata['k':'v'",
            "metadata['k']:'v",
            "created>1",
            "status:'a' 'b'",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
