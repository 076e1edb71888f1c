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
        read_file(&dir.join(p))?
    } else {
        return Err("must be `env:NAME` or `file:PATH`".into());
    };
    let value = value.trim_end_matches(['\n', '\r']).to_string();
    if value.trim().is_empty() {
        return Err(format!("the secret `{reference}` is empty"));
    }
    Ok(Secret::new(value))
}

/// The largest secret file read (an RSA-4096 private key in PEM is about 3.3 KiB).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Reads a secret file: a regular file (a FIFO would block the load, and with it every
/// later reload; a device could be endless) of at most [`MAX_SECRET_FILE`] bytes.
fn read_file(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read secret file `{shown}`: {e}"))?;
    if !meta.is_file() {
        return Err(format!("secret file `{shown}` is not a regular file"));
    }
    if meta.len() > MAX_SECRET_FILE {
        return Err(format!("secret file `{shown}` is larger than {MAX_SECRET_FILE} bytes"));
    }
    let mut text = String::new();
    let read = std::fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_SECRET_FILE + 1), &mut text));
    read.map_err(|e| format!("cannot read secret file `{shown}`: {e}"))?;
    if text.len() as u64 > MAX_SECRET_FILE {
        return Err(format!("secret file `{shown}` is larger than {MAX_SECRET_FILE} bytes"));
    }
    Ok(text)
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
        // Only a regular file of a secret's size: a FIFO blocked the load (and every later
        // reload) for good, /dev/zero read until memory ran out.
        let fifo = dir.path().join("pipe");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // A writer that opens once a reader does: were the FIFO read, the test would fail
        // on an empty secret instead of hanging (nobody ever reads it, the thread just waits).
        let writer = fifo.clone();
        std::thread::spawn(move || drop(std::fs::OpenOptions::new().write(true).open(writer)));
        assert!(resolve("file:pipe", dir.path()).unwrap_err().contains("not a regular file"));
        assert!(resolve("file:/dev/zero", dir.path()).unwrap_err().contains("not a regular file"));
        std::fs::write(dir.path().join("big"), vec![b'k'; 70_000]).unwrap();
        assert!(resolve("file:big", dir.path()).unwrap_err().contains("larger than 65536 bytes"));
        // (An env var is checked the same way; setting one here would race other tests.)
        assert!(resolve("sk_live_x", dir.path()).unwrap_err().contains("must be"));
    }
}
