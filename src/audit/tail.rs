//! Finds where an audit log's chain ends, reading the file from its end: the log grows
//! without bound (every API call adds a record), so a start must not read it whole.
//! Checking the records before the last is `paymux audit verify`'s job.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// The chain's last record, and the torn tail after it, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Tail {
    /// The last complete record's `seq` (0 when there is none).
    pub seq: u64,
    /// Its `hash` (`GENESIS` when there is none).
    pub hash: String,
    /// A last record left unfinished (a crash or a full disk during a write): the offset it
    /// starts at, where the file is to be cut.
    pub torn_from: Option<u64>,
}

/// Bytes read from the end at first; doubled until the last record fits.
const FIRST_WINDOW: u64 = 64 * 1024;

/// Reads `file` (of `len` bytes) backwards to its last complete record.
pub fn read(file: &mut File, len: u64) -> Result<Tail, String> {
    let mut window = FIRST_WINDOW;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0u8; (len - start) as usize];
        file.seek(SeekFrom::Start(start)).map_err(|e| e.to_string())?;
        file.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if let Some(tail) = scan(&buf, start)? {
            return Ok(tail);
        }
        window *= 2;
    }
}

/// The tail as `buf` (the file from offset `start` on) shows it, or `None` when `buf` does
/// not reach back far enough to tell.
fn scan(buf: &[u8], start: u64) -> Result<Option<Tail>, String> {
    let mut lines: Vec<(usize, &[u8])> = Vec::new();
    let mut at = 0;
    for line in buf.split_inclusive(|b| *b == b'\n') {
        lines.push((at, line));
        at += line.len();
    }
    // Read from the middle of the file, the first piece may be part of a line.
    let whole_from = usize::from(start > 0);
    let mut torn_from = None;
    for (i, &(at, line)) in lines.iter().enumerate().skip(whole_from).rev() {
        let text = String::from_utf8_lossy(line);
        if text.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str::<serde_json::Value>(text.trim()).ok().filter(|_| line.ends_with(b"\n"));
        match record {
            Some(v) => {
                let seq = v.get("seq").and_then(|s| s.as_u64()).ok_or("a record has no seq")?;
                let hash = v.get("hash").and_then(|s| s.as_str()).ok_or("a record has no hash")?;
                return Ok(Some(Tail { seq, hash: hash.to_string(), torn_from }));
            }
            // The last record alone may be torn; the one before it was finished.
            None if torn_from.is_none() && i + 1 == lines.len() => torn_from = Some(start + at as u64),
            None => {
                let end = start + (at + line.len()) as u64;
                return Err(format!("record ending at byte {end} is unreadable; run `paymux audit verify`"));
            }
        }
    }
    Ok((start == 0).then(|| Tail { seq: 0, hash: super::GENESIS.to_string(), torn_from }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(bytes: &[u8]) -> Result<Tail, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, bytes).unwrap();
        read(&mut File::open(&path).unwrap(), bytes.len() as u64)
    }

    fn record(seq: u64, pad: usize) -> String {
        format!("{{\"seq\":{seq},\"hash\":\"h{seq}\",\"pad\":\"{}\"}}\n", "x".repeat(pad))
    }

    fn at(seq: u64, torn_from: Option<u64>) -> Tail {
        Tail { seq, hash: format!("h{seq}"), torn_from }
    }

    #[test]
    fn finds_the_last_record_of_a_long_log() {
        let log: String = (1..=5000).map(|s| record(s, 40)).collect();
        assert!(log.len() as u64 > 3 * FIRST_WINDOW);
        assert_eq!(tail_of(log.as_bytes()), Ok(at(5000, None)));
        assert_eq!(tail_of(b"").unwrap(), Tail { seq: 0, hash: crate::audit::GENESIS.into(), torn_from: None });
        // Blank lines after it are kept.
        assert_eq!(tail_of(format!("{log}\n  \n").as_bytes()), Ok(at(5000, None)));
    }

    #[test]
    fn a_last_record_longer_than_the_window_is_read_whole() {
        let log = format!("{}{}", record(1, 10), record(2, 3 * FIRST_WINDOW as usize));
        assert_eq!(tail_of(log.as_bytes()), Ok(at(2, None)));
        let torn = format!("{}{}", log, &record(3, 3 * FIRST_WINDOW as usize)[..150_000]);
        assert_eq!(tail_of(torn.as_bytes()), Ok(at(2, Some(log.len() as u64))));
    }

    #[test]
    fn a_torn_last_record_is_cut_and_an_unreadable_earlier_one_refused() {
        let good = format!("{}{}", record(1, 0), record(2, 0));
        // Unfinished (no newline), unfinished JSON, garbage with a newline: each cut.
        for torn in [&record(3, 0)[..10], &record(3, 0)[..record(3, 0).len() - 1], "garbage\n"] {
            assert_eq!(tail_of(format!("{good}{torn}").as_bytes()), Ok(at(2, Some(good.len() as u64))), "{torn:?}");
        }
        assert_eq!(
            tail_of(b"{\"seq\":1").unwrap(),
            Tail { seq: 0, hash: crate::audit::GENESIS.into(), torn_from: Some(0) }
        );
        let bad = format!("{}garbage\n{}", record(1, 0), &record(3, 0)[..10]);
        let end = record(1, 0).len() + "garbage\n".len();
        assert_eq!(
            tail_of(bad.as_bytes()),
            Err(format!("record ending at byte {end} is unreadable; run `paymux audit verify`"))
        );
        assert_eq!(tail_of(b"{\"hash\":\"h\"}\n"), Err("a record has no seq".into()));
    }
}
