//! `application/x-www-form-urlencoded` parameters with Stripe's bracket keys
//! (`metadata[k]=v`, `payment_method_types[0]=card`, `payment_method_data[card][token]=t`,
//! `expand[]=x`), decoded into a tree of JSON objects whose leaves are strings.
//!
//! Lists stay objects keyed by index (`{"0": "card"}`) because the syntax cannot tell a list
//! from a map with numeric keys (`metadata[0]`); [`Params::list`] reads them as lists.

use serde_json::{Map, Value};

/// A malformed parameter key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid parameter name `{key}`: {why}")]
pub(crate) struct FormError {
    pub key: String,
    pub why: &'static str,
}

/// Decoded request parameters.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Params(pub Map<String, Value>);

/// Splits `a[b][0]` into `["a", "b", "0"]`; `a[]` gives an empty last segment.
fn split_key(key: &str) -> Result<Vec<&str>, FormError> {
    let err = |why| FormError { key: key.to_string(), why };
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    if head.is_empty() || head.contains(']') {
        return Err(err("a name must come before any bracket"));
    }
    let mut parts = vec![head];
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or(err("expected `[` after `]`"))?;
        let close = inner.find(']').ok_or(err("unbalanced brackets"))?;
        let seg = &inner[..close];
        if seg.contains('[') {
            return Err(err("unbalanced brackets"));
        }
        parts.push(seg);
        rest = &inner[close + 1..];
    }
    Ok(parts)
}

fn insert(node: &mut Map<String, Value>, key: &str, parts: &[&str], value: String) -> Result<(), FormError> {
    let err = |why| FormError { key: key.to_string(), why };
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return Err(err("empty name")),
    };
    // `a[]` appends: the next index of the list.
    let seg = if first.is_empty() { node.len().to_string() } else { (*first).to_string() };
    if rest.is_empty() {
        if node.get(&seg).is_some_and(Value::is_object) {
            return Err(err("used both as a value and as a hash"));
        }
        node.insert(seg, Value::String(value));
        return Ok(());
    }
    let child = node.entry(seg).or_insert_with(|| Value::Object(Map::new()));
    match child {
        Value::Object(m) => insert(m, key, rest, value),
        _ => Err(err("used both as a value and as a hash")),
    }
}

/// Parses a form body or query string.
pub(crate) fn parse(input: &[u8]) -> Result<Params, FormError> {
    let mut root = Map::new();
    for (k, v) in form_urlencoded::parse(input) {
        let parts = split_key(&k)?;
        insert(&mut root, &k, &parts, v.into_owned())?;
    }
    Ok(Params(root))
}

impl Params {
    /// A top-level or nested value by path.
    pub(crate) fn get(&self, path: &[&str]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        rest.iter().try_fold(self.0.get(*first)?, |v, k| v.get(*k))
    }

    /// A string leaf by path (`None` if absent or not a string).
    pub(crate) fn str(&self, path: &[&str]) -> Option<&str> {
        self.get(path).and_then(Value::as_str)
    }

    /// Top-level names not in `allowed`.
    pub(crate) fn unknown<'a>(&'a self, allowed: &[&str]) -> Option<&'a str> {
        self.0.keys().map(String::as_str).find(|k| !allowed.contains(k))
    }

    /// Reads an indexed list (`x[0]`, `x[1]`…) of strings, in index order. `Err` names the
    /// parameter when it is not such a list.
    pub(crate) fn list(&self, name: &str) -> Result<Option<Vec<String>>, String> {
        let Some(v) = self.0.get(name) else { return Ok(None) };
        let Some(m) = v.as_object() else { return Err(format!("Invalid array: {name} must be a list")) };
        let mut items: Vec<(usize, String)> = Vec::with_capacity(m.len());
        for (k, v) in m {
            let i = k.parse::<usize>().map_err(|_| format!("Invalid array: {name}[{k}] is not indexed"))?;
            let s = v.as_str().ok_or_else(|| format!("Invalid array: {name}[{k}] must be a string"))?;
            items.push((i, s.to_string()));
        }
        items.sort_by_key(|(i, _)| *i);
        Ok(Some(items.into_iter().map(|(_, s)| s).collect()))
    }

    /// Reads a one-level hash of strings (`metadata[k]=v`).
    pub(crate) fn hash(&self, name: &str) -> Result<Option<Vec<(String, String)>>, String> {
        let Some(v) = self.0.get(name) else { return Ok(None) };
        match v {
            // `metadata=` (empty) clears the hash.
            Value::String(s) if s.is_empty() => Ok(Some(Vec::new())),
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| {
                    v.as_str()
                        .map(|s| (k.clone(), s.to_string()))
                        .ok_or_else(|| format!("Invalid {name}[{k}]: must be a string"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            _ => Err(format!("Invalid hash: {name} must be a hash")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_stripe_python_bodies() {
        let body = b"amount=1000&currency=hkd&payment_method=pm_card_visa&confirm=true&metadata[order_id]=o1\
&metadata[note]=a+b%26c&payment_method_types[0]=card&payment_method_types[1]=link\
&payment_method_data[type]=card&payment_method_data[card][token]=tok_visa\
&return_url=https%3A%2F%2Fexample.com%2Fret%3Fa%3D1%26b%3D2";
        let p = parse(body).unwrap();
        assert_eq!(p.str(&["amount"]), Some("1000"));
        assert_eq!(p.str(&["metadata", "note"]), Some("a b&c"));
        assert_eq!(p.str(&["payment_method_data", "card", "token"]), Some("tok_visa"));
        assert_eq!(p.str(&["return_url"]), Some("https://example.com/ret?a=1&b=2"));
        assert_eq!(p.list("payment_method_types").unwrap(), Some(vec!["card".to_string(), "link".to_string()]));
        assert_eq!(
            p.hash("metadata").unwrap().unwrap(),
            vec![("note".to_string(), "a b&c".to_string()), ("order_id".to_string(), "o1".to_string())]
        );
        assert_eq!(p.unknown(&["amount", "currency"]), Some("confirm"));
    }

    #[test]
    fn percent_encoded_brackets_and_appends() {
        // `requests` re-encodes query strings: expand%5B0%5D=latest_charge
        let p = parse(b"expand%5B0%5D=latest_charge&expand[]=customer&items[0][price]=p1").unwrap();
        assert_eq!(p.list("expand").unwrap().unwrap(), vec!["latest_charge", "customer"]);
        assert_eq!(p.get(&["items", "0", "price"]), Some(&json!("p1")));
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in ["a[b=1", "[a]=1", "a]b=1", "a[b]c=1", "a[[b]]=1"] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let e = parse(b"metadata=x&metadata[a]=y").unwrap_err();
        assert!(e.to_string().contains("both as a value and as a hash"), "{e}");
        let e = parse(b"metadata[a]=y&metadata=x").unwrap_err();
        assert_eq!(e.key, "metadata");
    }

    #[test]
    fn lists_and_hashes_are_type_checked() {
        let p = parse(b"payment_method_types=card&metadata[a][b]=c&metadata2=").unwrap();
        assert!(p.list("payment_method_types").is_err());
        assert!(p.hash("metadata").is_err());
        assert_eq!(p.hash("metadata2").unwrap(), Some(vec![]));
        assert_eq!(p.list("absent").unwrap(), None);
        let p = parse(b"x[a]=1").unwrap();
        assert!(p.list("x").is_err());
    }
}
