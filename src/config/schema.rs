//! JSON Schema validation of config files, with every error mapped to `file:line:col`.
//!
//! The schemas in `schemas/` are embedded in the binary, so `paymux check` works anywhere.
//! Messages are written here rather than taken from the validator so that they name the field
//! and never echo a value (a mistyped secret must not end up in a terminal or CI log).

use super::diag::{suggest, Diagnostic};
use super::spans::{escape, SpanMap};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::Validator;
use serde_json::Value;
use std::sync::OnceLock;

/// The schema source for each file kind.
pub const SCHEMAS: &[(&str, &str)] = &[
    ("server", include_str!("../../schemas/server.schema.json")),
    ("channels", include_str!("../../schemas/channels.schema.json")),
    ("routing", include_str!("../../schemas/routing.schema.json")),
];

struct Compiled {
    kind: &'static str,
    schema: Value,
    validator: Validator,
}

fn compiled() -> &'static [Compiled] {
    static C: OnceLock<Vec<Compiled>> = OnceLock::new();
    C.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|(kind, src)| {
                // The schemas are part of the binary and covered by tests; failing here is a
                // build defect, not a user error.
                let schema: Value = serde_json::from_str(src).expect("embedded schema is JSON");
                let validator = jsonschema::draft202012::new(&schema).expect("embedded schema compiles");
                Compiled { kind, schema, validator }
            })
            .collect()
    })
}

/// Kinds that have a schema.
pub fn kinds() -> impl Iterator<Item = &'static str> {
    SCHEMAS.iter().map(|(k, _)| *k)
}

/// Validates `doc` against the schema of `kind`; returns every error.
pub fn validate(kind: &str, doc: &Value, spans: &SpanMap, file: &str) -> Vec<Diagnostic> {
    let Some(c) = compiled().iter().find(|c| c.kind == kind) else {
        return vec![];
    };
    let mut out = Vec::new();
    for err in c.validator.iter_errors(doc) {
        let ptr = err.instance_path().as_str().to_string();
        let field = display_path(&ptr);
        let schema_ptr = err.schema_path().as_str().to_string();
        // A secret (or what may be one: a key pasted where its hash goes) written in the
        // wrong form: said without repeating it (the message reaches the log, the reload's
        // answer and the audit log). Such fields are `writeOnly` in the schemas.
        if let Some(node) = write_only(&c.schema, &schema_ptr) {
            let (message, help) = if Some(node) == c.schema.pointer("/$defs/secret_ref") {
                (
                    format!("`{field}` must be a secret reference, `env:NAME` or `file:PATH` (what is written there is not shown)"),
                    "secrets are never inline: put it in an environment variable or a file and refer to that".to_string(),
                )
            } else {
                let what = schema_description(&c.schema, &schema_ptr).unwrap_or_default();
                (format!("`{field}` is not valid (what is written there is not shown)"), what)
            };
            out.push(diag(file, spans, &ptr, false, message, Some(help)));
            continue;
        }
        let (pos_ptr, message, help): (String, String, Option<String>) = match err.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                for name in unexpected {
                    let p = format!("{ptr}/{}", escape(name));
                    let allowed = sibling_properties(&c.schema, &schema_ptr);
                    let help = suggest(name, allowed.iter().map(String::as_str))
                        .map(|s| format!("did you mean `{s}`?"))
                        .or_else(|| (!allowed.is_empty()).then(|| format!("allowed fields: {}", allowed.join(", "))));
                    out.push(diag(file, spans, &p, false, format!("unknown field `{}`", join(&field, name)), help));
                }
                continue;
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or("?");
                let where_ = if field.is_empty() { "the file".to_string() } else { format!("`{field}`") };
                (ptr.clone(), format!("missing required field `{name}` in {where_}"), None)
            }
            ValidationErrorKind::Type { kind } => {
                let want = match kind {
                    TypeKind::Single(t) => format!("{t}"),
                    TypeKind::Multiple(ts) => format!("{ts:?}"),
                };
                let found = type_name(err.instance());
                // Decimal amounts are strings so they are never read as floats.
                let help = (want == "string" && matches!(found, "number" | "integer"))
                    .then(|| format!("write it in quotes: `\"{}\"`", err.instance()));
                (ptr.clone(), format!("`{field}` must be of type {want}, found {found}"), help)
            }
            ValidationErrorKind::Enum { options } => {
                let opts = options_list(options);
                let got = err.instance().as_str().map(str::to_string);
                let help = got.as_deref().and_then(|g| {
                    let names: Vec<String> = options
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                        .unwrap_or_default();
                    suggest(g, names.iter().map(String::as_str)).map(|s| format!("did you mean `{s}`?"))
                });
                (ptr.clone(), format!("`{field}` must be one of: {opts}"), help)
            }
            ValidationErrorKind::Constant { expected_value } => {
                (ptr.clone(), format!("`{field}` must be {expected_value}"), None)
            }
            ValidationErrorKind::Pattern { pattern } => {
                let got = err.instance().as_str().unwrap_or_default();
                // Codes (currencies, countries) are upper case; say so rather than only quote
                // the pattern.
                let upper = got.to_ascii_uppercase();
                let help = if pattern.contains("[A-Z]") && !pattern.contains("[a-z]") && upper != got {
                    Some(format!("did you mean `{upper}`?"))
                } else {
                    schema_description(&c.schema, &schema_ptr).map(|d| d.to_string())
                };
                (ptr.clone(), format!("`{field}` has an invalid format: `{got}` does not match `{pattern}`"), help)
            }
            ValidationErrorKind::Minimum { limit } | ValidationErrorKind::ExclusiveMinimum { limit } => {
                (ptr.clone(), format!("`{field}` must be at least {limit}"), None)
            }
            ValidationErrorKind::Maximum { limit } | ValidationErrorKind::ExclusiveMaximum { limit } => {
                (ptr.clone(), format!("`{field}` must be at most {limit}"), None)
            }
            ValidationErrorKind::MinLength { limit } => {
                (ptr.clone(), format!("`{field}` must have at least {limit} characters"), None)
            }
            ValidationErrorKind::MaxLength { limit } => {
                (ptr.clone(), format!("`{field}` must have at most {limit} characters"), None)
            }
            ValidationErrorKind::MinItems { limit } => {
                (ptr.clone(), format!("`{field}` must have at least {limit} item(s)"), None)
            }
            ValidationErrorKind::MinProperties { limit } => {
                (ptr.clone(), format!("`{field}` must have at least {limit} field(s)"), None)
            }
            ValidationErrorKind::UniqueItems => (ptr.clone(), format!("`{field}` has duplicate items"), None),
            ValidationErrorKind::OneOfMultipleValid { .. } => (
                ptr.clone(),
                format!("`{field}` must have either `channels` or `split` (with optional `backups`), not both"),
                None,
            ),
            ValidationErrorKind::OneOfNotValid { .. } => (
                ptr.clone(),
                format!(
                    "`{field}` needs `channels` ([primary, backups…]) or `split` ([{{channel, weight}}…], with optional \
                     `backups`); `backups` goes with `split` only, and the two do not mix"
                ),
                None,
            ),
            ValidationErrorKind::Not { .. } => (
                ptr.clone(),
                format!("`{field}` has settings of another connector kind"),
                Some("keep only the section named after `connector`".into()),
            ),
            _ => (ptr.clone(), format!("`{field}` is invalid: {}", err.kind().keyword()), None),
        };
        out.push(diag(file, spans, &pos_ptr, false, message, help));
    }
    out
}

fn diag(file: &str, spans: &SpanMap, ptr: &str, value: bool, message: String, help: Option<String>) -> Diagnostic {
    let pos = if value { spans.locate_value(ptr) } else { spans.locate(ptr) };
    Diagnostic { file: file.to_string(), line: pos.line, col: pos.col, message, help }
}

/// `/channels/0/timeouts` → `channels[0].timeouts`.
pub fn display_path(ptr: &str) -> String {
    let mut s = String::new();
    for seg in ptr.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
            s.push_str(&format!("[{seg}]"));
        } else {
            if !s.is_empty() {
                s.push('.');
            }
            s.push_str(&seg);
        }
    }
    s
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn options_list(options: &Value) -> String {
    options
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().map(|s| format!("`{s}`")).unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Resolves a schema pointer, following local `$ref`s.
fn resolve<'a>(root: &'a Value, ptr: &str) -> Option<&'a Value> {
    let mut cur = root;
    for seg in ptr.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if let Some(r) = cur.get("$ref").and_then(Value::as_str) {
            if seg != "$ref" {
                cur = root.pointer(r.trim_start_matches('#'))?;
            }
        }
        if seg == "$ref" {
            let r = cur.get("$ref")?.as_str()?;
            cur = root.pointer(r.trim_start_matches('#'))?;
            continue;
        }
        cur = match cur {
            Value::Object(m) => m.get(&seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// For an `additionalProperties` error, the names under the sibling `properties`.
fn sibling_properties(root: &Value, schema_ptr: &str) -> Vec<String> {
    let parent = schema_ptr.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    let mut names: Vec<String> = resolve(root, parent)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The `writeOnly` schema the keyword at `schema_ptr` lies within (at any depth under it),
/// if any: the value it judged must not be repeated.
fn write_only<'a>(root: &'a Value, schema_ptr: &str) -> Option<&'a Value> {
    let mut prefix = String::new();
    for seg in schema_ptr.split('/').skip(1) {
        prefix.push('/');
        prefix.push_str(seg);
        if let Some(n) = resolve(root, &prefix).filter(|n| n.get("writeOnly") == Some(&Value::Bool(true))) {
            return Some(n);
        }
    }
    None
}

/// The `description` of the schema node owning a keyword error.
fn schema_description(root: &Value, schema_ptr: &str) -> Option<String> {
    let parent = schema_ptr.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    let node = resolve(root, parent)?;
    let d = node.get("description").and_then(Value::as_str)?;
    // First sentence is enough for a one-line error.
    Some(d.split(". ").next().unwrap_or(d).trim_end_matches('.').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_property_has_description(v: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                if p.get("description").is_none() {
                    missing.push(format!("{path}/properties/{k}"));
                }
                every_property_has_description(p, &format!("{path}/properties/{k}"), missing);
            }
        }
        if let Value::Object(m) = v {
            for (k, c) in m {
                // `if` subschemas are conditions, not documentation of fields.
                if k != "properties" && k != "if" {
                    every_property_has_description(c, &format!("{path}/{k}"), missing);
                }
            }
        }
        if let Value::Array(a) = v {
            for (i, c) in a.iter().enumerate() {
                every_property_has_description(c, &format!("{path}/{i}"), missing);
            }
        }
    }

    #[test]
    fn schemas_compile_and_are_documented() {
        for (kind, src) in SCHEMAS {
            let v: Value = serde_json::from_str(src).unwrap();
            assert!(v.get("$id").is_some(), "{kind} has no $id");
            assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
            let mut missing = vec![];
            every_property_has_description(&v, "", &mut missing);
            assert!(missing.is_empty(), "{kind}: undocumented properties {missing:?}");
        }
        assert_eq!(compiled().len(), SCHEMAS.len());
    }

    #[test]
    fn display_paths() {
        assert_eq!(display_path("/channels/0/timeouts"), "channels[0].timeouts");
        assert_eq!(display_path(""), "");
    }
}
