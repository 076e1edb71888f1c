//! Write-ahead journal: the request path's durable write.
//!
//! A payment's two writes on the request path (claim + payment + first attempt before the
//! provider call; outcome + stored response after it) are appended here as one line each, a
//! single `write(2)` with no fsync, and applied to the database in batches off the request
//! path. The promise is the one SQLite's WAL makes under `synchronous=NORMAL`: a record whose
//! append returned survives the process being killed (it is in the kernel's page cache), not
//! the machine losing power. Configurations that ask for the stronger promise
//! (`synchronous_full`) do not journal; they commit each write to the database and fsync.
//!
//! The database stores, in the transaction that applies them, the sequence number of the
//! last record it applied, so replay after a crash applies every record exactly once.
//!
//! Files: `journal-<first seq>.log` in the data directory, JSON Lines, one record per line:
//! `{"seq":N,"ops":[…]}`. The current segment is sealed once it passes [`SEGMENT_BYTES`] and
//! deleted when every record in it is applied; a segment whose records are all applied while
//! it is current is emptied in place.

use super::Write;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Size past which the current segment is sealed and a new one started.
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// One journaled batch.
#[derive(Debug, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub ops: Vec<Write>,
}

#[derive(Serialize)]
struct EntryRef<'a> {
    seq: u64,
    ops: &'a [Write],
}

struct Segment {
    path: PathBuf,
    /// Open for appending while current.
    file: Option<File>,
    len: u64,
    /// Sequence number of the last record in it (0: none).
    last_seq: u64,
}

/// The journal's files and the records not yet applied.
pub struct Journal {
    dir: PathBuf,
    current: Segment,
    sealed: Vec<Segment>,
    next_seq: u64,
    /// Appended and not yet taken by an apply, in order.
    pending: Vec<Entry>,
    /// Idempotency keys (api key id, key) a record not yet applied claims or completes, with
    /// the sequence number of the latest such record: the database's answer about them is
    /// stale until it is applied.
    keys: HashMap<(String, String), u64>,
}

/// A journal file that cannot be read as written.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(
        "{file}:{line}: unreadable journal record ({reason}); later records cannot be applied in order. \
         Keep the data directory as it is and report it: the journal holds acknowledged writes not yet in paymux.db"
    )]
    Corrupt { file: String, line: usize, reason: String },
}

fn segment_first_seq(name: &str) -> Option<u64> {
    name.strip_prefix("journal-")?.strip_suffix(".log")?.parse().ok()
}

fn idem_key(op: &Write) -> Option<(String, String)> {
    match op {
        Write::ClaimIdempotency(r) => Some((r.api_key_id.clone(), r.key.clone())),
        Write::CompleteIdempotency { api_key_id, key, .. } => Some((api_key_id.clone(), key.clone())),
        _ => None,
    }
}

impl Journal {
    /// Opens the journal in `dir`. Records a previous process appended and the database has
    /// not applied (sequence above `applied`) come back as pending, in order, for the caller
    /// to apply before serving. A record cut short at the very end of the last segment (the
    /// machine stopped mid-append: never acknowledged) is ignored; anything else unreadable
    /// is refused.
    pub fn open(dir: &Path, applied: u64) -> Result<Journal, OpenError> {
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if let Some(first) = e.file_name().to_str().and_then(segment_first_seq) {
                found.push((first, e.path()));
            }
        }
        found.sort();
        let mut sealed = Vec::new();
        let mut pending = Vec::new();
        let mut prev_seq = 0;
        let n_files = found.len();
        for (i, (_, path)) in found.into_iter().enumerate() {
            let text = std::fs::read(&path)?;
            if text.is_empty() {
                std::fs::remove_file(&path)?;
                continue;
            }
            let last_file = i + 1 == n_files;
            let corrupt =
                |line: usize, reason: String| OpenError::Corrupt { file: path.display().to_string(), line, reason };
            let mut lines = text.split_inclusive(|b| *b == b'\n').enumerate().peekable();
            let mut good_len = 0;
            while let Some((n, line)) = lines.next() {
                let parsed = if line.ends_with(b"\n") {
                    serde_json::from_slice::<Entry>(line).map_err(|e| e.to_string())
                } else {
                    Err("no end of line".to_string())
                };
                let entry = match parsed {
                    Ok(e) => e,
                    Err(_) if last_file && lines.peek().is_none() => {
                        // Cut off, so that the next start (when this is no longer the last
                        // file) does not take it for damage.
                        OpenOptions::new().write(true).open(&path)?.set_len(good_len as u64)?;
                        break;
                    }
                    Err(reason) => return Err(corrupt(n + 1, reason)),
                };
                if entry.seq <= prev_seq {
                    return Err(corrupt(n + 1, format!("sequence {} after {prev_seq}", entry.seq)));
                }
                // The records not yet applied must follow the database's marker without a gap
                // (a missing record would be applied around, into a state no run produced).
                let expected = pending.last().map_or(applied, |e: &Entry| e.seq) + 1;
                if entry.seq > applied && entry.seq != expected {
                    return Err(corrupt(
                        n + 1,
                        format!("sequence {} where {expected} was expected: records are missing", entry.seq),
                    ));
                }
                prev_seq = entry.seq;
                good_len += line.len();
                if entry.seq > applied {
                    pending.push(entry);
                }
            }
            if good_len == 0 {
                // Only a cut-off record: nothing in it was ever acknowledged. Removed, so the
                // new current segment (which may take its name) is never mistaken for it.
                std::fs::remove_file(&path)?;
                continue;
            }
            sealed.push(Segment { path, file: None, len: good_len as u64, last_seq: prev_seq });
        }
        let max_seq = prev_seq.max(applied);
        let next_seq = max_seq + 1;
        let mut keys = HashMap::new();
        for e in &pending {
            for op in &e.ops {
                if let Some(k) = idem_key(op) {
                    keys.insert(k, e.seq);
                }
            }
        }
        let current = Self::new_segment(dir, next_seq)?;
        let mut j = Journal { dir: dir.to_path_buf(), current, sealed, next_seq, pending, keys };
        // Files whose records are all in the database already go now.
        j.applied(applied)?;
        Ok(j)
    }

    fn new_segment(dir: &Path, first_seq: u64) -> io::Result<Segment> {
        let path = dir.join(format!("journal-{first_seq:020}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(Segment { path, file: Some(file), len, last_seq: 0 })
    }

    /// Appends one batch as one record; returns its sequence number once the record is in
    /// the file (the batch is kept, not copied, until it is applied). On a failed write the
    /// partial record is cut off again, so nothing of it is ever read back. A batch that
    /// cannot be serialised (a stored response that is not UTF-8) fails with `InvalidData`.
    /// On any failure the journal is as it was and the batch comes back with the error.
    pub fn append(&mut self, ops: Vec<Write>) -> Result<u64, (io::Error, Vec<Write>)> {
        let seq = self.next_seq;
        let mut line = match serde_json::to_vec(&EntryRef { seq, ops: &ops }) {
            Ok(l) => l,
            Err(e) => return Err((io::Error::new(io::ErrorKind::InvalidData, e), ops)),
        };
        line.push(b'\n');
        let seg = &mut self.current;
        let file = seg.file.as_mut().expect("the current segment is open");
        if let Err(e) = file.write_all(&line) {
            let _ = file.set_len(seg.len);
            return Err((e, ops));
        }
        seg.len += line.len() as u64;
        seg.last_seq = seq;
        self.next_seq += 1;
        for op in &ops {
            if let Some(k) = idem_key(op) {
                self.keys.insert(k, seq);
            }
        }
        self.pending.push(Entry { seq, ops });
        Ok(seq)
    }

    /// The writes of the record appended last, while it is pending.
    pub fn pending_last(&self) -> &[Write] {
        self.pending.last().map_or(&[], |e| &e.ops)
    }

    /// True when a record not yet applied claims or completes this idempotency key.
    pub fn holds_key(&self, api_key_id: &str, key: &str) -> bool {
        // Keys are few (those written in the last few milliseconds); a borrowed lookup
        // would need a second map type, a clone here is cheap.
        self.keys.contains_key(&(api_key_id.to_string(), key.to_string()))
    }

    /// Records appended and not yet taken for applying.
    pub fn backlog(&self) -> usize {
        self.pending.len()
    }

    /// True when every appended record has been taken for applying.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes the pending records for applying, oldest first. Seals the current segment when
    /// it has grown past [`SEGMENT_BYTES`] (a new one takes the next appends).
    pub fn take(&mut self) -> io::Result<Vec<Entry>> {
        if self.current.len >= SEGMENT_BYTES {
            let next = Self::new_segment(&self.dir, self.next_seq)?;
            let mut old = std::mem::replace(&mut self.current, next);
            old.file = None;
            self.sealed.push(old);
        }
        Ok(std::mem::take(&mut self.pending))
    }

    /// Puts records that could not be applied back in front of the pending ones.
    pub fn untake(&mut self, mut entries: Vec<Entry>) {
        entries.append(&mut self.pending);
        self.pending = entries;
    }

    /// The database has applied (committed) every record up to `seq`: forgets their keys and
    /// removes the files that hold nothing else.
    pub fn applied(&mut self, seq: u64) -> io::Result<()> {
        self.keys.retain(|_, s| *s > seq);
        let mut first_err = None;
        let current = self.current.path.clone();
        self.sealed.retain(|s| {
            if s.last_seq > seq || s.path == current {
                return true;
            }
            match std::fs::remove_file(&s.path) {
                Ok(()) => false,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    first_err.get_or_insert(e);
                    true
                }
            }
        });
        let cur = &mut self.current;
        if cur.len > 0 && cur.last_seq <= seq {
            cur.file.as_ref().expect("the current segment is open").set_len(0)?;
            cur.len = 0;
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::IdemRecord;

    fn claim(key: &str) -> Vec<Write> {
        vec![Write::ClaimIdempotency(IdemRecord {
            api_key_id: "k".into(),
            key: key.into(),
            request_hash: "h".into(),
            resource_id: None,
            created_at: 1,
            expires_at: 2,
        })]
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    }

    fn seqs(j: &Journal) -> Vec<u64> {
        j.pending.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn records_not_applied_come_back_in_order_with_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 0).unwrap();
        for k in ["a", "b", "c"] {
            j.append(claim(k)).unwrap();
        }
        assert!(j.holds_key("k", "b") && !j.holds_key("k", "z") && !j.holds_key("other", "b"));
        drop(j);
        // The database says it applied up to 1.
        let j = Journal::open(dir.path(), 1).unwrap();
        assert_eq!(seqs(&j), [2, 3]);
        assert!(!j.holds_key("k", "a") && j.holds_key("k", "b") && j.holds_key("k", "c"));
        assert_eq!(j.next_seq, 4);
    }

    #[test]
    fn a_record_cut_short_at_the_end_is_ignored_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 0).unwrap();
        j.append(claim("a")).unwrap();
        j.append(claim("b")).unwrap();
        let path = j.current.path.clone();
        drop(j);
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"seq":3,"ops":[{"ClaimIdempot"#);
        std::fs::write(&path, &torn).unwrap();
        let mut j = Journal::open(dir.path(), 0).unwrap();
        assert_eq!(seqs(&j), [1, 2]);
        assert_eq!(std::fs::read(&path).unwrap(), whole, "the torn tail is cut off");
        // The next record continues the sequence in a new file; a later open reads both.
        assert_eq!(j.append(claim("c")).unwrap(), 3);
        drop(j);
        let j = Journal::open(dir.path(), 0).unwrap();
        assert_eq!(seqs(&j), [1, 2, 3]);
    }

    #[test]
    fn a_segment_holding_only_a_cut_off_record_is_removed_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), 0).unwrap();
        let path = j.current.path.clone();
        drop(j);
        // Killed during the very first append.
        std::fs::write(&path, br#"{"seq":1,"ops":[{"Claim"#).unwrap();
        let mut j = Journal::open(dir.path(), 0).unwrap();
        assert!(j.sealed.is_empty());
        assert_eq!(j.current.path, path, "the new segment takes the same name");
        j.append(claim("a")).unwrap();
        // Applying nothing new must not remove the file the journal writes to.
        j.applied(0).unwrap();
        assert!(path.exists());
        drop(j);
        assert_eq!(seqs(&Journal::open(dir.path(), 0).unwrap()), [1]);
    }

    #[test]
    fn damage_before_the_end_is_refused_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 0).unwrap();
        for k in ["a", "b", "c"] {
            j.append(claim(k)).unwrap();
        }
        let path = j.current.path.clone();
        drop(j);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{{\"seq\":2,\"op\n{}\n", lines[0], lines[2])).unwrap();
        let e = Journal::open(dir.path(), 0).err().unwrap().to_string();
        assert!(e.contains(&format!("{}:2: unreadable journal record", path.display())), "{e}");
        // Records out of order, or missing, are damage too.
        std::fs::write(&path, format!("{}\n{}\n{}\n", lines[0], lines[1], lines[0])).unwrap();
        let e = Journal::open(dir.path(), 0).err().unwrap().to_string();
        assert!(e.contains(":3: ") && e.contains("sequence 1 after 2"), "{e}");
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let e = Journal::open(dir.path(), 0).err().unwrap().to_string();
        assert!(e.contains(":2: ") && e.contains("sequence 3 where 2 was expected"), "{e}");
        // Records the database has applied may go; the rest must follow its marker.
        let e = Journal::open(dir.path(), 1).err().unwrap().to_string();
        assert!(e.contains("sequence 3 where 2 was expected"), "{e}");
        assert_eq!(seqs(&Journal::open(dir.path(), 2).unwrap()), [3]);
    }

    #[test]
    fn applied_segments_are_removed_and_a_large_one_is_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 0).unwrap();
        let mut last = 0;
        while j.current.len < SEGMENT_BYTES {
            last = j.append(claim(&format!("key-{last}"))).unwrap();
        }
        let taken = j.take().unwrap();
        assert_eq!(taken.len() as u64, last);
        assert_eq!(files(dir.path()).len(), 2, "sealed at its size, a new segment started");
        // Appended while the sealed one is being applied.
        let next = j.append(claim("late")).unwrap();
        j.applied(last).unwrap();
        assert_eq!(files(dir.path()).len(), 1, "the applied segment is gone");
        assert!(!j.holds_key("k", "key-1") && j.holds_key("k", "late"));
        drop(j);
        let j = Journal::open(dir.path(), last).unwrap();
        assert_eq!(seqs(&j), [next]);
    }

    #[test]
    fn a_failed_append_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 0).unwrap();
        j.append(claim("a")).unwrap();
        // A stored response that is not UTF-8 cannot be journaled; the journal is unchanged.
        let bad = [Write::CompleteIdempotency {
            api_key_id: "k".into(),
            key: "a".into(),
            status: 201,
            body: vec![0xff, 0xfe],
        }];
        assert_eq!(j.append(bad.to_vec()).unwrap_err().0.kind(), io::ErrorKind::InvalidData);
        assert_eq!(seqs(&j), [1]);
        assert_eq!(j.append(claim("b")).unwrap(), 2);
    }
}
