//! Secret references: `env:NAME` or `file:PATH` (relative to the config directory).
//! Secret values are read when the policy compiles and live only inside `Secret`/key types.

use crate::domain::Secret;
use std::path::Path;

/// Resolves a reference; the error names the reference, never a value. An empty secret is
/// refused: an HMAC key of no bytes would let anyone sign a webhook.
pub fn resolve(reference: &str, dir: &Path) -> Result<Secret<String>, String> {
    // A final line break is the file's (or the variable's, filled from a file), not the key's.
    let value = if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?
    } else if let Some(p) = reference.strip_prefix("file:") {
        let path = dir.join(p);
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read secret file `{}`: {e}", path.display()))?
    } else {
        return Err("must be `env:NAME` or `file:PATH`".into());
    };
    let value = value.trim_end_matches(['\n', '\r']).to_string();
    if value.trim().is_empty() {
        return Err(format!("the secret `{reference}` is empty"));
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_secret_is_refused_naming_the_reference_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        std::fs::write(dir.path().join("key"), "whsec_x\n").unwrap();
        assert_eq!(resolve("file:empty", dir.path()).unwrap_err(), "the secret `file:empty` is empty");
        assert_eq!(resolve("file:key", dir.path()).unwrap().expose(), "whsec_x");
        // (An env var is checked the same way; setting one here would race other tests.)
        assert!(resolve("sk_live_x", dir.path()).unwrap_err().contains("must be"));
    }
}
