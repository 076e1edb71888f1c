//! `paymux audit verify`: walks the chain and names the first bad record.

use super::{chain_hash, GENESIS};
use std::io::{BufRead, BufReader};
use std::path::Path;

/// An intact chain.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    pub last_seq: u64,
    pub head: String,
}

/// The first broken record: 1-based line number, its seq (if readable) and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    pub line: usize,
    pub seq: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(s) => write!(f, "line {}: record seq {}: {}", self.line, s, self.reason),
            // Line 0: the file itself (it could not be opened).
            None if self.line == 0 => write!(f, "{}", self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

/// Verifies every record of `path`.
pub fn verify_file(path: &Path) -> Result<Report, Broken> {
    let f =
        std::fs::File::open(path).map_err(|e| Broken { line: 0, seq: None, reason: format!("cannot open: {e}") })?;
    let mut prev = GENESIS.to_string();
    let mut expect_seq = None::<u64>;
    let mut n = 0;
    let mut last_seq = 0;
    // Split on `\n` alone: `lines()` would also take `\r\n`, and a carriage return added to
    // a record would pass unseen.
    for (i, line) in BufReader::new(f).split(b'\n').enumerate() {
        let lineno = i + 1;
        // What an unreadable line should have been, to name it.
        let expected = |what: String| match expect_seq {
            Some(e) => format!("{what} (where record seq {e} was due)"),
            None => what,
        };
        let line = line.map_err(|e| Broken { line: lineno, seq: None, reason: format!("unreadable: {e}") })?;
        let line = String::from_utf8(line).map_err(|_| Broken {
            line: lineno,
            seq: None,
            reason: expected("not UTF-8 text".into()),
        })?;
        // paymux writes whole records only: any other line was put there by someone else.
        if line.trim().is_empty() {
            let reason = expected("an empty line (paymux never writes one)".into());
            return Err(Broken { line: lineno, seq: None, reason });
        }
        if line.contains('\r') {
            let reason = expected("a carriage return (paymux ends records with \\n only)".into());
            return Err(Broken { line: lineno, seq: None, reason });
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| Broken {
            line: lineno,
            seq: None,
            reason: expected(format!("not JSON: {e}")),
        })?;
        let seq = v.get("seq").and_then(|s| s.as_u64());
        let bad = |reason: String| Broken { line: lineno, seq, reason };
        let Some(seq_v) = seq else { return Err(bad("no seq".into())) };
        if let Some(e) = expect_seq {
            if seq_v != e {
                return Err(bad(format!("expected seq {e}: a record was removed, inserted or reordered")));
            }
        }
        let rec_prev = v.get("prev_hash").and_then(|s| s.as_str()).unwrap_or("");
        if rec_prev != prev {
            return Err(bad("prev_hash does not match the previous record's hash".into()));
        }
        let hash = v.get("hash").and_then(|s| s.as_str()).ok_or_else(|| bad("no hash".into()))?;
        let marker = ",\"hash\":\"";
        let Some(cut) = line.rfind(marker) else { return Err(bad("hash is not the last field".into())) };
        // The line must be exactly the hashed body plus the hash: anything after the hash
        // (a field a JSON reader would take, a repeated key) is outside the chain.
        if line[cut..] != format!("{marker}{hash}\"}}") || hash.len() != 64 {
            return Err(bad("text after the hash, or a malformed hash (record altered)".into()));
        }
        let body = format!("{}}}", &line[..cut]);
        if chain_hash(&prev, &body) != hash {
            return Err(bad("hash does not match the record's content (record altered)".into()));
        }
        prev = hash.to_string();
        expect_seq = Some(seq_v + 1);
        last_seq = seq_v;
        n += 1;
    }
    Ok(Report { records: n, last_seq, head: prev })
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    async fn sample(dir: &Path) -> std::path::PathBuf {
        let log = AuditLog::open(dir, false).unwrap();
        for i in 0..5 {
            log.record(Event { actor: "k".into(), action: "attempt", outcome: format!("o{i}"), ..Default::default() })
                .await;
        }
        log.flush().await;
        dir.join("audit.jsonl")
    }

    #[tokio::test]
    async fn detects_change_deletion_and_reordering() {
        let dir = tempfile::tempdir().unwrap();
        let p = sample(dir.path()).await;
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        std::fs::write(&p, text.replace("\"o2\"", "\"oX\"")).unwrap();
        let e = verify_file(&p).unwrap_err();
        assert_eq!((e.line, e.seq), (3, Some(3)), "{e}");

        let deleted: Vec<&str> = lines.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, l)| *l).collect();
        std::fs::write(&p, deleted.join("\n") + "\n").unwrap();
        assert_eq!(verify_file(&p).unwrap_err().line, 2);

        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        std::fs::write(&p, swapped.join("\n") + "\n").unwrap();
        assert_eq!(verify_file(&p).unwrap_err().line, 4);

        // A field appended after the hash (a JSON reader takes the last of repeated keys).
        let mut appended = lines.clone();
        let forged = format!("{},\"outcome\":\"forged\"}}", &lines[2][..lines[2].len() - 1]);
        appended[2] = &forged;
        std::fs::write(&p, appended.join("\n") + "\n").unwrap();
        let e = verify_file(&p).unwrap_err();
        assert_eq!((e.line, e.seq), (3, Some(3)), "{e}");

        // A line inserted that holds no record.
        let mut blank = lines.clone();
        blank.insert(2, "");
        std::fs::write(&p, blank.join("\n") + "\n").unwrap();
        assert_eq!(verify_file(&p).unwrap_err().line, 3);

        // A carriage return added at a record's end (or the file turned to CRLF).
        std::fs::write(&p, text.replacen("\n", "\r\n", 2)).unwrap();
        let e = verify_file(&p).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        assert!(e.reason.contains("carriage return"), "{e}");

        // A record cut short: named by the seq that was due there.
        let mut cut = lines.clone();
        cut[3] = &lines[3][..40];
        std::fs::write(&p, cut.join("\n") + "\n").unwrap();
        let e = verify_file(&p).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.to_string().contains("record seq 4 was due"), "{e}");

        std::fs::write(&p, text).unwrap();
        assert_eq!(verify_file(&p).unwrap().records, 5);
    }
}
