//! Secret references: `env:NAME` or `file:PATH` (relative to the config directory).
//! Secret values are read when the policy compiles and live only inside `Secret`/key types.

use crate::domain::Secret;
use std::path::Path;

/// Resolves a reference; the error names the reference, never a value.
pub fn resolve(reference: &str, dir: &Path) -> Result<Secret<String>, String> {
    if let Some(name) = reference.strip_prefix("env:") {
        return std::env::var(name).map(Secret::new).map_err(|_| format!("environment variable `{name}` is not set"));
    }
    if let Some(p) = reference.strip_prefix("file:") {
        let path = dir.join(p);
        return std::fs::read_to_string(&path)
            .map(|s| Secret::new(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| format!("cannot read secret file `{}`: {e}", path.display()));
    }
    Err("must be `env:NAME` or `file:PATH`".into())
}
