//! Config diagnostics: `FILE:LINE:COL: message` plus an optional `help:` line.

use std::fmt;

/// One problem found in a config directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Path of the file as the user gave it (joined with the config dir).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong, naming the field path. Never echoes a value that could be a secret.
    pub message: String,
    /// How to fix it, where that is obvious.
    pub help: Option<String>,
}

impl Diagnostic {
    /// Attaches a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)?;
        if let Some(h) = &self.help {
            write!(f, "\nhelp: {h}")?;
        }
        Ok(())
    }
}

/// Diagnostics in file, line and column order.
pub fn sorted(diags: &[Diagnostic]) -> Vec<&Diagnostic> {
    let mut v: Vec<&Diagnostic> = diags.iter().collect();
    v.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    v
}

/// Sorts diagnostics by file, line and column and renders them one per line.
pub fn render(diags: &[Diagnostic]) -> String {
    let v = sorted(diags);
    let mut out = String::new();
    for d in v {
        out.push_str(&d.to_string());
        out.push('\n');
    }
    out
}

/// Levenshtein distance, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a distance that scales with the word length.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1) + 1;
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= limit || c.starts_with(word) || word.starts_with(*c))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(suggest("timeout", ["connect_ms", "attempt_ms"]), None);
        assert_eq!(suggest("atempt_ms", ["connect_ms", "attempt_ms"]), Some("attempt_ms"));
        assert_eq!(suggest("timeout", ["timeout_ms", "retries"]), Some("timeout_ms"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
