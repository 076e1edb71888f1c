//! Append-only, hash-chained audit log (JSON Lines in the data dir).
//!
//! Every record carries `seq`, `prev_hash` and `hash` = SHA-256 over the previous hash and the
//! record's own bytes, so changing, deleting or reordering any line breaks the chain at that
//! point ([`verify`]). Records are written by one background thread; producers hand them over
//! a bounded channel and wait when it is full, so a record is never silently dropped.
//! Records name actors by API key id and never carry secrets, card numbers or wallet tokens.

mod tail;
pub mod verify;

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The audit log's file in the data directory.
pub const FILE: &str = "audit.jsonl";

/// The hash of "nothing before": chains start here.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a producer supplies; `ts` is when it is queued, and the writer adds `seq` and the
/// hashes.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub request_id: Option<String>,
    /// API key id, `admin`, `system`, or `provider:<channel>`.
    pub actor: String,
    /// e.g. `payment.create`, `route.decision`, `attempt`, `webhook`, `config.reload`.
    pub action: &'static str,
    pub payment_id: Option<String>,
    pub outcome: String,
    /// Action-specific fields (channel, rule, codes, versions). Never secrets.
    pub details: serde_json::Value,
}

#[derive(Serialize)]
struct Record<'a> {
    ts: String,
    seq: u64,
    request_id: Option<&'a str>,
    actor: &'a str,
    action: &'a str,
    payment_id: Option<&'a str>,
    outcome: &'a str,
    details: &'a serde_json::Value,
    prev_hash: &'a str,
}

/// Handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    path: Arc<PathBuf>,
}

enum Msg {
    Event(Box<Event>, time::OffsetDateTime),
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// Audit setup failure.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {msg}")]
pub struct AuditError {
    pub path: String,
    pub msg: String,
}

impl AuditLog {
    /// Opens `dir/audit.jsonl`, continues its chain, and starts the writer thread.
    ///
    /// `sync_every_batch` matches the store's durability: with it, every batch is fsynced
    /// before the next one (survives power loss); without it, batches are written at once
    /// (survive a process crash, kill -9, like SQLite's `synchronous=NORMAL`), and fsynced
    /// with the first batch after a second has passed since the last sync, or on `flush`.
    pub fn open(dir: &Path, sync_every_batch: bool) -> Result<AuditLog, AuditError> {
        let path = dir.join(FILE);
        let err = |msg: String| AuditError { path: path.display().to_string(), msg };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let (mut seq, mut prev) = (0u64, GENESIS.to_string());
        let mut recovered = None;
        if path.exists() {
            let mut f = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| err(e.to_string()))?;
            let len = f.metadata().map_err(|e| err(e.to_string()))?.len();
            let last = tail::read(&mut f, len).map_err(err)?;
            (seq, prev) = (last.seq, last.hash);
            // A torn tail (a crash or a full disk during a write) is cut off, and the cut is
            // itself recorded, so the chain stays verifiable.
            if let Some(cut) = last.torn_from {
                f.set_len(cut).map_err(|e| err(e.to_string()))?;
                f.sync_all().map_err(|e| err(e.to_string()))?;
                recovered = Some(len - cut);
                tracing::warn!(bytes = len - cut, "audit log ended in a torn record; it was cut off");
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| err(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<Msg>(65_536);
        std::thread::Builder::new()
            .name("paymux-audit".into())
            .spawn(move || writer(file, rx, seq, prev, sync_every_batch))
            .map_err(|e| err(e.to_string()))?;
        let log = AuditLog { tx, path: Arc::new(path) };
        if let Some(bytes) = recovered {
            // The channel is empty here, so this cannot fail for lack of room.
            let _ = log.tx.try_send(Msg::Event(
                Box::new(Event {
                    request_id: None,
                    actor: "system".into(),
                    action: "audit.recovered",
                    payment_id: None,
                    outcome: "torn_tail_removed".into(),
                    details: serde_json::json!({"bytes_removed": bytes}),
                }),
                time::OffsetDateTime::now_utc(),
            ));
        }
        Ok(log)
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues a record; waits (never drops) when the writer is behind.
    pub async fn record(&self, e: Event) {
        if self.tx.send(Msg::Event(Box::new(e), time::OffsetDateTime::now_utc())).await.is_err() {
            tracing::error!("audit writer is gone; record lost");
        }
    }

    /// Queues a record from synchronous code.
    pub fn record_blocking(&self, e: Event) {
        if self.tx.blocking_send(Msg::Event(Box::new(e), time::OffsetDateTime::now_utc())).is_err() {
            tracing::error!("audit writer is gone; record lost");
        }
    }

    /// Waits until every record queued so far is written and synced.
    pub async fn flush(&self) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
        }
    }
}

/// Hash of one record line (without its `hash` field) chained to `prev`.
pub fn chain_hash(prev: &str, body: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev.as_bytes());
    ctx.update(b"\n");
    ctx.update(body.as_bytes());
    crate::crypto::hex(ctx.finish().as_ref())
}

fn writer(mut file: File, mut rx: mpsc::Receiver<Msg>, mut seq: u64, mut prev: String, sync_every_batch: bool) {
    let mut last_sync = std::time::Instant::now();
    let ts_fmt = time::format_description::well_known::Rfc3339;
    // Length of the file's complete records: a failed write is cut back to it.
    let mut good_len = file.metadata().map(|m| m.len()).ok();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
            if batch.len() >= 1024 {
                break;
            }
        }
        let mut buf = String::new();
        let mut flushes = Vec::new();
        for m in batch {
            match m {
                Msg::Flush(t) => flushes.push(t),
                Msg::Event(e, at) => {
                    seq += 1;
                    let rec = Record {
                        ts: at.format(&ts_fmt).unwrap_or_default(),
                        seq,
                        request_id: e.request_id.as_deref(),
                        actor: &e.actor,
                        action: e.action,
                        payment_id: e.payment_id.as_deref(),
                        outcome: &e.outcome,
                        details: &e.details,
                        prev_hash: &prev,
                    };
                    let body = serde_json::to_string(&rec).unwrap_or_default();
                    let hash = chain_hash(&prev, &body);
                    // `body` ends with `}`; the hash goes last so verify can strip it exactly.
                    buf.push_str(&body[..body.len() - 1]);
                    buf.push_str(",\"hash\":\"");
                    buf.push_str(&hash);
                    buf.push_str("\"}\n");
                    prev = hash;
                }
            }
        }
        let flush_requested = !flushes.is_empty();
        let sync = sync_every_batch || flush_requested || last_sync.elapsed() >= std::time::Duration::from_secs(1);
        // Never drop a batch: the chain already includes it. On failure (disk full, I/O
        // error) cut any partial write off and try again, while producers wait.
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            if good_len.is_none() {
                good_len = file.metadata().map(|m| m.len()).ok();
            }
            let result = file.write_all(buf.as_bytes()).and_then(|_| if sync { file.sync_data() } else { Ok(()) });
            match result {
                Ok(()) => {
                    good_len = good_len.map(|l| l + buf.len() as u64);
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit log write failed; retrying (requests wait for the audit log)");
                    if let Some(l) = good_len {
                        let _ = file.set_len(l);
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
        if sync {
            last_sync = std::time::Instant::now();
        }
        for f in flushes {
            let _ = f.send(());
        }
        if !sync_every_batch && !flush_requested {
            // Group commit: let records gather for a moment instead of waking this thread
            // (and paying a context switch on the request path) for every single one.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn torn_last_record_is_cut_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), true).unwrap();
        for i in 0..3 {
            log.record(Event { actor: "k".into(), action: "attempt", outcome: format!("o{i}"), ..Default::default() })
                .await;
        }
        log.flush().await;
        drop(log);
        let p = dir.path().join("audit.jsonl");
        let len = std::fs::metadata(&p).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len - 20).unwrap();
        let log = AuditLog::open(dir.path(), true).unwrap();
        log.flush().await;
        let r = verify::verify_file(&p).unwrap();
        assert_eq!(r.records, 3, "2 intact + the recovery record");
        assert!(std::fs::read_to_string(&p).unwrap().contains("audit.recovered"));
    }

    #[tokio::test]
    async fn chain_continues_across_reopen_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), true).unwrap();
        for i in 0..3 {
            log.record(Event {
                actor: "k1".into(),
                action: "payment.create",
                outcome: format!("ok{i}"),
                ..Default::default()
            })
            .await;
        }
        log.flush().await;
        drop(log);
        let log = AuditLog::open(dir.path(), true).unwrap();
        log.record(Event {
            actor: "system".into(),
            action: "config.reload",
            outcome: "applied".into(),
            ..Default::default()
        })
        .await;
        log.flush().await;
        let report = verify::verify_file(&dir.path().join("audit.jsonl")).unwrap();
        assert_eq!(report.records, 4);
        assert_eq!(report.last_seq, 4);
    }
}
