//! SQLite backend (WAL). One connection behind a mutex: SQLite serialises writers anyway, and
//! the statements here are short. `synchronous=NORMAL` survives a process crash (kill -9);
//! `FULL` also survives power loss.
//!
//! Under `synchronous=NORMAL`, [`Store::write_batch`] (a payment's two writes on the request
//! path) appends to the write-ahead [`Journal`] instead of committing, and the batches reach
//! the database in one transaction per few milliseconds ([`SqliteStore::apply_journal`],
//! called by a background thread). Every other method, read or write, first applies what the
//! journal holds, so each sees exactly the state it would have seen had the batches been
//! committed when they were journaled: the journal changes the cost, not the semantics.

use super::journal::{Entry, Journal};
use super::keyset::KeySet;
use super::*;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// A second connection used only for WAL checkpoints, so a checkpoint (which fsyncs)
    /// never holds the connection request handlers use.
    checkpointer: Mutex<Connection>,
    /// A third, for the idempotency check of a journaled batch while `conn` is busy
    /// applying: it reads the committed state. Only taken with `journal` held.
    reader: Mutex<Connection>,
    /// Lock order: `conn` before `journal` before `keys` before `reader`.
    journal: Mutex<Journal>,
    /// The idempotency keys the database may hold ([`KeySet`]): a claim of a key not in it
    /// needs no read. Added to with `journal` held, in the same critical section as the
    /// write that stores the key.
    keys: Mutex<KeySet>,
    /// New batches go to the journal (`synchronous=NORMAL`); with `FULL` they are committed
    /// and fsynced at once, and the journal only replays what an earlier run left.
    journal_writes: bool,
    /// False after an apply failed (until one succeeds): batches then commit directly.
    journal_ok: std::sync::atomic::AtomicBool,
    /// Where batches the database refused to apply are set aside (see `apply_journal`).
    rejected_path: PathBuf,
    synchronous_full: bool,
    /// Exclusive locks on `paymux.lock` in the data directory and on the directory itself,
    /// held while the store is open: two processes sharing one store would each take the
    /// other's work for abandoned (and charge again). The directory's lock holds even when
    /// the lock file is deleted, as one that looks stale after a crash may be.
    _lock: (std::fs::File, std::fs::File),
}

// Every WAL frame a commit writes is a page, so the layout keeps the pages a payment touches
// few and hot: tables keyed by (time-ordered) ids are WITHOUT ROWID, so a row lives in its
// primary-key b-tree and new rows append at its right edge; idempotency records, keyed by
// the client's random keys, live in an append-only rowid table (their large stored
// responses never split random pages) with a small unique index; indexes most rows never
// enter are partial. Two lookups need no index of their own: an attempt reference is its
// payment id and number (the primary key), and idempotency records expire in rowid order.
const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS payments (
  id TEXT PRIMARY KEY, api_key_id TEXT NOT NULL, order_id TEXT NOT NULL, method TEXT NOT NULL,
  amount INTEGER NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL, channel TEXT, attempt_ref TEXT,
  provider_ref TEXT, route_rule TEXT NOT NULL, next_action TEXT, error_code TEXT, error_message TEXT,
  refunded INTEGER NOT NULL DEFAULT 0, metadata TEXT NOT NULL, customer TEXT NOT NULL, return_url TEXT,
  policy_version TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
  reconcile_at INTEGER, reconcile_backoff_ms INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS payments_reconcile ON payments(reconcile_at) WHERE reconcile_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS attempts (
  payment_id TEXT NOT NULL, n INTEGER NOT NULL, channel TEXT NOT NULL, attempt_ref TEXT NOT NULL,
  outcome TEXT NOT NULL, error_code TEXT, latency_ms INTEGER NOT NULL, provider_ref TEXT,
  started_at INTEGER NOT NULL, watch INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (payment_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attempts_provider ON attempts(channel, provider_ref) WHERE provider_ref IS NOT NULL;
CREATE INDEX IF NOT EXISTS attempts_watch ON attempts(watch) WHERE watch = 1;
CREATE TABLE IF NOT EXISTS refunds (
  id TEXT PRIMARY KEY, payment_id TEXT NOT NULL, amount INTEGER NOT NULL, currency TEXT NOT NULL,
  status TEXT NOT NULL, reason TEXT, provider_refund_ref TEXT, error_code TEXT,
  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refunds_payment ON refunds(payment_id);
CREATE TABLE IF NOT EXISTS idempotency (
  api_key_id TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL, state TEXT NOT NULL,
  status INTEGER, body BLOB, resource_id TEXT, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
  UNIQUE (api_key_id, key)
);
CREATE TABLE IF NOT EXISTS webhook_events (
  channel TEXT NOT NULL, event_id TEXT NOT NULL, received_at INTEGER NOT NULL, PRIMARY KEY (channel, event_id)
) WITHOUT ROWID;
"#;

/// Version 2: the sequence number of the last write-ahead journal record applied
/// ([`super::journal`]), written in the transaction that applies it.
const SCHEMA_V2: &str = r#"
CREATE TABLE journal_applied (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL);
INSERT INTO journal_applied (id, seq) VALUES (0, 0);
"#;

/// The schema as the steps that build it: step `i` brings a database of version `i` to
/// version `i + 1`. A new database runs them all; an older one the ones it lacks. A step, once
/// released, never changes (a test pins them): a change is a new step.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2];

/// The layout [`MIGRATIONS`] build, stamped in the database's `user_version`.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The database's file in the data directory.
pub const DB_FILE: &str = "paymux.db";

/// `PRAGMA application_id` of a paymux database ("pmux"): tells it from another SQLite file.
const APPLICATION_ID: i64 = 0x706d_7578;

/// Creates the schema in a new database, or checks that an existing one has this build's
/// layout. A database this build cannot read as it is is refused with what to do, before any
/// request touches it.
fn ensure_schema(conn: &mut Connection, path: &Path) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let app: i64 = tx.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let objects: i64 = tx.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
    let refuse = |what: String| {
        StoreError::Backend(format!(
            "{}: {what}; this build of paymux reads schema version {SCHEMA_VERSION}. Run the build that wrote it \
             until its payments and refunds are settled, or point --data-dir elsewhere; do not delete it while \
             it may hold unsettled payments, pending refunds or attempts to reverse",
            path.display()
        ))
    };
    if app != 0 && app != APPLICATION_ID {
        return Err(refuse(format!("not a paymux database (application_id {app:#x})")));
    }
    let from = match version {
        0 if objects == 0 => 0,
        // Written before the schema was versioned: adopted as version 1 only if its layout is
        // exactly version 1's (an older layout would fail, or quietly misbehave, on first use).
        0 if layout(&tx)? == layout(&schema_only(1)?)? => 1,
        0 => return Err(refuse("the database has an unversioned layout from an earlier build".into())),
        v if v > SCHEMA_VERSION => {
            return Err(refuse(format!("the database has schema version {v}, from a newer build")))
        }
        v if v < 0 => return Err(refuse(format!("the database has schema version {v}"))),
        v => v as usize,
    };
    for step in &MIGRATIONS[from..] {
        tx.execute_batch(step)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.commit()?;
    Ok(())
}

/// A database's tables and indexes as SQLite stores their definitions (SQLite's own, such as
/// `sqlite_stat1` from ANALYZE, left out).
fn layout(c: &Connection) -> rusqlite::Result<Vec<(String, String, Option<String>)>> {
    c.prepare(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite~_%' ESCAPE '~' ORDER BY type, name",
    )?
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
    .collect()
}

/// An in-memory database holding the schema of `version`, to compare layouts against.
fn schema_only(version: usize) -> rusqlite::Result<Connection> {
    let c = Connection::open_in_memory()?;
    for step in &MIGRATIONS[..version] {
        c.execute_batch(step)?;
    }
    Ok(c)
}

/// The database's connections (writer, checkpointer, reader), its schema brought up to date,
/// and the journal sequence it has applied through.
fn open_db(path: &Path, synchronous_full: bool) -> StoreResult<(Connection, Connection, Connection, i64)> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Checked before anything else changes the file (a refused database stays as it was).
    ensure_schema(&mut conn, path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if synchronous_full { "FULL" } else { "NORMAL" })?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(64);
    // Checkpoints run from the housekeeping task on `checkpointer`, not inside a request's
    // commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let checkpointer = Connection::open(path)?;
    checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;
    let reader = Connection::open(path)?;
    reader.busy_timeout(std::time::Duration::from_secs(5))?;
    let applied: i64 = conn.query_row("SELECT seq FROM journal_applied", [], |r| r.get(0))?;
    Ok((conn, checkpointer, reader, applied))
}

impl SqliteStore {
    /// Opens (or creates) `dir/paymux.db`.
    pub fn open(dir: &Path, synchronous_full: bool) -> StoreResult<Self> {
        Self::open_with(dir, synchronous_full, KeySet::CAPACITY)
    }

    /// Fails, saying so, when another paymux process holds `dir`; opens and creates nothing.
    /// A start asks first, before it waits for its ports (which that process holds too).
    pub fn check_free(dir: &Path) -> StoreResult<()> {
        let lock_path = dir.join("paymux.lock");
        let held = |f: std::io::Result<std::fs::File>| {
            f.is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
        };
        if held(std::fs::OpenOptions::new().write(true).open(&lock_path)) {
            return Err(in_use(dir, &lock_path));
        }
        if held(std::fs::File::open(dir)) {
            return Err(in_use(dir, dir));
        }
        Ok(())
    }

    /// [`Self::open`] with a key set of `key_capacity` keys (tests fill a small one).
    fn open_with(dir: &Path, synchronous_full: bool, key_capacity: usize) -> StoreResult<Self> {
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::Backend(format!("{} is not a directory", dir.display())));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let lock_path = dir.join("paymux.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", lock_path.display())))?;
        let dir_lock =
            std::fs::File::open(dir).map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", dir.display())))?;
        for (file, what) in [(&lock, &lock_path), (&dir_lock, &dir.to_path_buf())] {
            if let Err(e) = file.try_lock() {
                return Err(match e {
                    std::fs::TryLockError::WouldBlock => in_use(dir, what),
                    std::fs::TryLockError::Error(e) => {
                        StoreError::Backend(format!("cannot lock {}: {e}", what.display()))
                    }
                });
            }
        }
        let path = dir.join(DB_FILE);
        // SQLite's own messages ("database disk image is malformed") name no file.
        let (conn, checkpointer, reader, applied) = open_db(&path, synchronous_full).map_err(|e| match e {
            StoreError::Backend(m) if !m.contains(&*path.to_string_lossy()) => {
                StoreError::Backend(format!("{}: {m}", path.display()))
            }
            e => e,
        })?;
        let journal = Journal::open(dir, applied as u64).map_err(|e| StoreError::Backend(e.to_string()))?;
        let store = SqliteStore {
            conn: Mutex::new(conn),
            checkpointer: Mutex::new(checkpointer),
            reader: Mutex::new(reader),
            journal: Mutex::new(journal),
            keys: Mutex::new(KeySet::new(key_capacity)),
            journal_writes: !synchronous_full,
            journal_ok: std::sync::atomic::AtomicBool::new(true),
            rejected_path: dir.join("journal-rejected.jsonl"),
            synchronous_full,
            _lock: (lock, dir_lock),
        };
        // What a previous run journaled and did not apply goes in before anything is served.
        let replayed = store.apply_journal()?;
        if replayed > 0 {
            tracing::info!(records = replayed, "applied the write-ahead journal a previous run left");
        }
        // Every stored key, before any claim is checked against the set.
        store.load_keys(super::now_ms())?;
        Ok(store)
    }

    /// Fills the key set with the keys of every record still live at `now`.
    /// Only a journaling store consults the set (a direct commit checks in its transaction).
    fn load_keys(&self, now: i64) -> StoreResult<()> {
        if !self.journal_writes {
            return Ok(());
        }
        let c = self.lock_conn()?;
        let mut keys = self.lock_keys();
        // Records are appended in rowid order: the newest `capacity` are loaded; the older
        // ones are left out, and the set says "maybe" for every key until they have expired.
        let last: i64 = c.query_row("SELECT COALESCE(MAX(rowid), 0) FROM idempotency", [], |r| r.get(0))?;
        let cutoff = last.saturating_sub(keys.capacity() as i64);
        let left_out: Option<i64> =
            c.query_row("SELECT MAX(expires_at) FROM idempotency WHERE rowid <= ?1", params![cutoff], |r| r.get(0))?;
        if let Some(e) = left_out {
            keys.forget_until(e);
        }
        // With the slack the set keeps after expiry: a clock stepped back finds them.
        let mut stmt =
            c.prepare("SELECT api_key_id, key, expires_at FROM idempotency WHERE rowid > ?1 AND expires_at > ?2")?;
        let mut rows = stmt.query(params![cutoff, now - KeySet::SLACK_MS])?;
        while let Some(r) = rows.next()? {
            keys.add(&r.get::<_, String>(0)?, &r.get::<_, String>(1)?, r.get(2)?, now);
        }
        if keys.unknown_until() > now {
            tracing::warn!(
                keys = keys.len(),
                until_ms = keys.unknown_until(),
                "more live idempotency keys than the in-memory key set holds; every claim is checked in the database until the oldest have expired"
            );
        }
        tracing::debug!(keys = keys.len(), "idempotency key set loaded");
        Ok(())
    }

    /// The key set; one a panic left half-updated is no longer trusted to say "absent".
    fn lock_keys(&self) -> MutexGuard<'_, KeySet> {
        self.keys.lock().unwrap_or_else(|poisoned| {
            let mut keys = poisoned.into_inner();
            keys.saturate();
            keys
        })
    }

    /// Adds the keys `ops` claims to the key set. Called with `journal` held, once the
    /// claims are stored (journaled or committed); cannot fail, so a stored key is never
    /// left out.
    fn note_claims(&self, ops: &[Write]) {
        if !self.journal_writes {
            return;
        }
        let mut keys = None;
        for op in ops {
            if let Write::ClaimIdempotency(r) = op {
                keys.get_or_insert_with(|| self.lock_keys()).add(&r.api_key_id, &r.key, r.expires_at, r.created_at);
            }
        }
    }

    /// Applies every journaled batch to the database now; returns how many. The background
    /// applier calls this every few milliseconds; every other store call does it first.
    pub fn apply_journal(&self) -> StoreResult<usize> {
        let mut c = self.lock_conn()?;
        self.apply_locked(&mut c)
    }

    /// Starts the thread that applies the journal every `every` (until the store is dropped).
    pub fn spawn_applier(store: &Arc<SqliteStore>, every: std::time::Duration) {
        let weak = Arc::downgrade(store);
        let spawned = std::thread::Builder::new().name("paymux-journal".into()).spawn(move || loop {
            std::thread::sleep(every);
            let Some(s) = weak.upgrade() else { return };
            if let Err(e) = s.apply_journal() {
                tracing::error!(error = %e, "applying the write-ahead journal failed; will retry");
            }
        });
        if let Err(e) = spawned {
            // Still correct: every other store call applies the journal first.
            tracing::error!(error = %e, "could not start the journal applier thread");
        }
    }

    fn lock_conn(&self) -> StoreResult<MutexGuard<'_, Connection>> {
        self.conn.lock().map_err(|_| StoreError::Backend("store mutex poisoned".into()))
    }

    fn lock_journal(&self) -> StoreResult<MutexGuard<'_, Journal>> {
        self.journal.lock().map_err(|_| StoreError::Backend("journal mutex poisoned".into()))
    }

    fn apply_locked(&self, c: &mut Connection) -> StoreResult<usize> {
        let r = self.apply_pending(c, None);
        // While the database cannot take the journal, new batches are not acknowledged from
        // the journal alone: they commit directly (and fail, as this did, if it still can't).
        self.journal_ok.store(r.is_ok(), std::sync::atomic::Ordering::Relaxed);
        r
    }

    /// Applies what the journal holds. With `held`, the journal stays locked throughout (no
    /// append can slip in); without, it is locked only to take the records and to settle
    /// them, so appends go on while the database works.
    fn apply_pending(&self, c: &mut Connection, mut held: Option<&mut Journal>) -> StoreResult<usize> {
        let journal_err = |e: std::io::Error| StoreError::Backend(format!("journal: {e}"));
        let entries = {
            let mut guard = None;
            let j = match held.as_deref_mut() {
                Some(j) => j,
                None => &mut **guard.insert(self.lock_journal()?),
            };
            if j.is_idle() {
                return Ok(0);
            }
            j.take().map_err(journal_err)?
        };
        let n = entries.len();
        let last = entries.last().map_or(0, |e| e.seq);
        let result = self.apply_taken(c, entries);
        let mut guard = None;
        let j = match held {
            Some(j) => j,
            None => &mut **guard.insert(self.lock_journal()?),
        };
        match result {
            Ok(()) => j.applied(last).map_err(journal_err).map(|()| n),
            Err((e, back)) => {
                // Those not applied stay pending (and in the files), in order, for the next try.
                j.untake(back);
                Err(e)
            }
        }
    }

    /// Applies taken records in one transaction. On failure, returns the records not applied.
    fn apply_taken(&self, c: &mut Connection, entries: Vec<Entry>) -> Result<(), (StoreError, Vec<Entry>)> {
        match apply_entries(c, &entries) {
            Ok(()) => Ok(()),
            Err(e) if !is_constraint(&e) => Err((e.into(), entries)),
            // A batch the database refuses was checked when it was journaled, so this is a
            // bug; the others must not wait on it. Each applies on its own, and one refused
            // is set aside in a file with the reason, never dropped.
            Err(_) => {
                for (i, e) in entries.iter().enumerate() {
                    if let Err(err) = self.apply_alone(c, e) {
                        return Err((err, entries.into_iter().skip(i).collect()));
                    }
                }
                Ok(())
            }
        }
    }

    /// One journaled batch in its own transaction; one the database refuses (a constraint) is
    /// set aside with the reason and the marker moved past it.
    fn apply_alone(&self, c: &mut Connection, e: &Entry) -> StoreResult<()> {
        match apply_entries(c, std::slice::from_ref(e)) {
            Ok(()) => Ok(()),
            Err(err) if is_constraint(&err) => {
                self.set_aside(e, &err.to_string())?;
                let tx = c.transaction()?;
                tx.execute("UPDATE journal_applied SET seq = ?1", params![e.seq as i64])?;
                tx.commit().map_err(StoreError::from)
            }
            Err(err) => Err(err.into()),
        }
    }

    fn set_aside(&self, e: &Entry, reason: &str) -> StoreResult<()> {
        use std::io::Write as _;
        tracing::error!(seq = e.seq, reason, file = %self.rejected_path.display(), "journaled batch refused by the database; set aside");
        let line = serde_json::json!({"seq": e.seq, "reason": reason, "ops": e.ops});
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.rejected_path)
            .and_then(|mut f| writeln!(f, "{line}").map(|_| f))
            .map_err(|err| StoreError::Backend(format!("{}: {err}", self.rejected_path.display())))?;
        f.sync_all().map_err(|err| StoreError::Backend(format!("{}: {err}", self.rejected_path.display())))
    }

    /// Tries to journal a batch. `Ok(Some(ops))`: it must be written to the database instead
    /// (a key it claims has a write still in the journal, so only the database, once that is
    /// applied, can say who holds it; or the batch cannot be serialised).
    fn journal_batch(&self, ops: Vec<Write>) -> StoreResult<Option<Vec<Write>>> {
        let mut j = self.lock_journal()?;
        for op in &ops {
            if let Write::ClaimIdempotency(r) = op {
                if j.holds_key(&r.api_key_id, &r.key) {
                    return Ok(Some(ops));
                }
                // Never stored: nothing to read.
                if !self.lock_keys().may_hold(&r.api_key_id, &r.key, r.created_at) {
                    continue;
                }
                // The main connection when it is free (its page cache is warm: the database
                // changes only through it); the reader while it applies. Never waits on
                // `conn` here (lock order), so a `try_lock`.
                let live = match self.conn.try_lock() {
                    Ok(c) => idem_live(&c, &r.api_key_id, &r.key, r.created_at)?,
                    Err(_) => {
                        let reader =
                            self.reader.lock().map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
                        idem_live(&reader, &r.api_key_id, &r.key, r.created_at)?
                    }
                };
                if let Some(s) = live {
                    return Err(StoreError::KeyTaken(s));
                }
            }
        }
        match j.append(ops) {
            Ok(_) => {
                self.note_claims(j.pending_last());
                Ok(None)
            }
            Err((e, ops)) if e.kind() == std::io::ErrorKind::InvalidData => Ok(Some(ops)),
            Err((e, _)) => Err(StoreError::Backend(format!("journal: {e}"))),
        }
    }

    /// Runs `f` on the connection once the journal is applied.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let mut c = self.lock_conn()?;
        self.apply_locked(&mut c)?;
        f(&mut c).map_err(StoreError::from)
    }

    /// Every row of a cached query.
    fn all<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        row: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> StoreResult<Vec<T>> {
        self.with(|c| c.prepare_cached(sql)?.query_map(params, row)?.collect())
    }

    /// At most one row of a cached query.
    fn one<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        row: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> StoreResult<Option<T>> {
        self.with(|c| c.prepare_cached(sql)?.query_row(params, row).optional())
    }
}

fn payment_from_row(r: &Row<'_>) -> rusqlite::Result<PaymentRow> {
    let conv =
        |i: usize, e: String| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into());
    let method: String = r.get(3)?;
    let currency: String = r.get(5)?;
    let status: String = r.get(6)?;
    let json = |i: usize| -> rusqlite::Result<serde_json::Value> {
        let s: Option<String> = r.get(i)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(serde_json::Value::Null))
    };
    Ok(PaymentRow {
        id: r.get(0)?,
        api_key_id: r.get(1)?,
        order_id: r.get(2)?,
        method: Method::parse(&method).ok_or_else(|| conv(3, method.clone()))?,
        amount: r.get(4)?,
        currency: Currency::parse(&currency).map_err(|e| conv(5, e.to_string()))?,
        status: PaymentStatus::parse(&status).ok_or_else(|| conv(6, status.clone()))?,
        channel: r.get(7)?,
        attempt_ref: r.get(8)?,
        provider_ref: r.get(9)?,
        route_rule: r.get(10)?,
        next_action: Some(json(11)?).filter(|v| !v.is_null()),
        error_code: r.get(12)?,
        error_message: r.get(13)?,
        refunded: r.get(14)?,
        metadata: json(15)?,
        customer: json(16)?,
        return_url: r.get(17)?,
        policy_version: r.get(18)?,
        created_at: r.get(19)?,
        updated_at: r.get(20)?,
        reconcile_at: r.get(21)?,
        reconcile_backoff_ms: r.get(22)?,
    })
}

const PAYMENT_COLS: &str = "id, api_key_id, order_id, method, amount, currency, status, channel, attempt_ref, provider_ref, route_rule, next_action, error_code, error_message, refunded, metadata, customer, return_url, policy_version, created_at, updated_at, reconcile_at, reconcile_backoff_ms";

fn attempt_from_row(r: &Row<'_>) -> rusqlite::Result<AttemptRow> {
    Ok(AttemptRow {
        payment_id: r.get(0)?,
        n: r.get(1)?,
        channel: r.get(2)?,
        attempt_ref: r.get(3)?,
        outcome: r.get(4)?,
        error_code: r.get(5)?,
        latency_ms: r.get(6)?,
        provider_ref: r.get(7)?,
        started_at: r.get(8)?,
        watch: r.get::<_, i64>(9)? != 0,
    })
}

const ATTEMPT_COLS: &str =
    "payment_id, n, channel, attempt_ref, outcome, error_code, latency_ms, provider_ref, started_at, watch";

fn refund_from_row(r: &Row<'_>) -> rusqlite::Result<RefundRow> {
    let currency: String = r.get(3)?;
    Ok(RefundRow {
        id: r.get(0)?,
        payment_id: r.get(1)?,
        amount: r.get(2)?,
        currency: Currency::parse(&currency).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.to_string().into())
        })?,
        status: r.get(4)?,
        reason: r.get(5)?,
        provider_refund_ref: r.get(6)?,
        error_code: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

const REFUND_COLS: &str =
    "id, payment_id, amount, currency, status, reason, provider_refund_ref, error_code, created_at, updated_at";

fn insert_attempt(c: &Connection, a: &AttemptRow) -> rusqlite::Result<()> {
    c.prepare_cached(&format!("INSERT INTO attempts ({ATTEMPT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"))?
        .execute(params![
            a.payment_id,
            a.n,
            a.channel,
            a.attempt_ref,
            a.outcome,
            a.error_code,
            a.latency_ms,
            a.provider_ref,
            a.started_at,
            i64::from(a.watch)
        ])
        .map(|_| ())
}

fn insert_payment(c: &Connection, p: &PaymentRow) -> rusqlite::Result<()> {
    c.prepare_cached(&format!("INSERT INTO payments ({PAYMENT_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,?23)"))?.execute(params![
                p.id, p.api_key_id, p.order_id, p.method.as_str(), p.amount, p.currency.code(), p.status.as_str(),
                p.channel, p.attempt_ref, p.provider_ref, p.route_rule, p.next_action.as_ref().map(json_text),
                p.error_code, p.error_message, p.refunded, json_text(&p.metadata), json_text(&p.customer),
                p.return_url, p.policy_version, p.created_at, p.updated_at, p.reconcile_at, p.reconcile_backoff_ms
            ],)
        .map(|_| ())
}

fn update_attempt(c: &Connection, a: &AttemptRow) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE attempts SET outcome=?3, error_code=?4, latency_ms=?5, provider_ref=?6, watch=?7 WHERE payment_id=?1 AND n=?2")?.execute(params![a.payment_id, a.n, a.outcome, a.error_code, a.latency_ms, a.provider_ref, i64::from(a.watch)],)
        .map(|_| ())
}

/// True when the row was written.
fn update_payment(c: &Connection, p: &PaymentRow) -> rusqlite::Result<bool> {
    // Whichever writer (engine, webhook, reconciler, status sync) comes last, and whatever
    // copy of the row it holds: a final status is replaced only by itself, or in the two
    // corrections (`succeeded` over an inferred failure; `canceled` over `succeeded`, the
    // provider having canceled a paid payment and refunded the payer). So a stale copy
    // never moves a payment back (to non-final, to `succeeded` from a refund status or from
    // `canceled`, to `failed` from money taken); the refunded total and the statuses it
    // decides belong to the refund settlement alone. A payer action once known stays while
    // the payment still waits on the payer (a writer that read the row before the action
    // was learnt does not erase it).
    c.prepare_cached(
            "UPDATE payments SET status=?2, channel=?3, attempt_ref=?4, provider_ref=?5,
                    next_action=CASE WHEN ?2 = 'requires_action' THEN COALESCE(?6, next_action) ELSE ?6 END, error_code=?7, error_message=?8, updated_at=?9, reconcile_at=?10, reconcile_backoff_ms=?11
             WHERE id=?1 AND (status IN ('requires_action','processing') OR status = ?2
                 OR (status = 'failed' AND error_code = ?12 AND ?2 = 'succeeded')
                 OR (status = 'succeeded' AND ?2 = 'canceled'))",
        )?
        .execute(params![
                p.id, p.status.as_str(), p.channel, p.attempt_ref, p.provider_ref, p.next_action.as_ref().map(json_text),
                p.error_code, p.error_message, p.updated_at, p.reconcile_at, p.reconcile_backoff_ms, INFERRED_FAILURE
            ],)
        .map(|n| n == 1)
}

/// Data directory `dir` is held by another process (through `what`).
fn in_use(dir: &Path, what: &Path) -> StoreError {
    StoreError::Backend(format!(
        "{} is in use by another paymux process (it holds {}); one data directory serves one process",
        dir.display(),
        what.display()
    ))
}

/// Sets payment `id`'s refunded total from its succeeded refunds, and a captured payment's
/// status from that total; returns the payment as written and the status it replaced when
/// either changed. Within the caller's transaction.
fn settle_refunds(tx: &Connection, id: &str, now: i64) -> rusqlite::Result<Option<(PaymentRow, PaymentStatus)>> {
    let p = tx
        .prepare_cached(&format!("SELECT {PAYMENT_COLS} FROM payments WHERE id = ?1"))?
        .query_row(params![id], payment_from_row)
        .optional()?;
    let Some(mut p) = p else { return Ok(None) };
    let done: i64 = tx
        .prepare_cached("SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE payment_id = ?1 AND status = 'succeeded'")?
        .query_row(params![id], |r| r.get(0))?;
    let before = p.status;
    if p.status.is_captured() {
        p.status = match done {
            d if d >= p.amount => PaymentStatus::Refunded,
            d if d > 0 => PaymentStatus::PartiallyRefunded,
            _ => PaymentStatus::Succeeded,
        };
    }
    if done == p.refunded && p.status == before {
        return Ok(None);
    }
    p.refunded = done;
    p.updated_at = now;
    tx.prepare_cached("UPDATE payments SET refunded = ?2, status = ?3, updated_at = ?4 WHERE id = ?1")?
        .execute(params![p.id, p.refunded, p.status.as_str(), p.updated_at])?;
    Ok(Some((p, before)))
}

/// The record holding `(k, key)` unless it expired by `now`.
fn idem_live(c: &Connection, k: &str, key: &str, now: i64) -> rusqlite::Result<Option<IdemState>> {
    c.prepare_cached(
        "SELECT request_hash, state, status, body, created_at, resource_id FROM idempotency WHERE api_key_id = ?1 AND key = ?2 AND expires_at > ?3",
    )?
    .query_row(params![k, key, now], |r| {
        let state: String = r.get(1)?;
        Ok(if state == "done" {
            IdemState::Done { request_hash: r.get(0)?, status: r.get::<_, i64>(2)? as u16, body: r.get(3)? }
        } else {
            IdemState::InFlight {
                request_hash: r.get(0)?,
                since: r.get(4)?,
                resource_id: r.get(5)?,
                orphaned: state == "orphaned",
            }
        })
    })
    .optional()
}

/// One write of a batch, its checks done (a claim was checked when journaled, or just before).
fn apply_op(tx: &Connection, op: &Write) -> rusqlite::Result<()> {
    match op {
        Write::InsertPayment(p) => insert_payment(tx, p),
        Write::UpdatePayment(p) => update_payment(tx, p).map(|_| ()),
        Write::InsertAttempt(a) => insert_attempt(tx, a),
        Write::UpdateAttempt(a) => update_attempt(tx, a),
        Write::ClaimIdempotency(r) => tx
            .prepare_cached("INSERT OR REPLACE INTO idempotency (api_key_id, key, request_hash, state, resource_id, created_at, expires_at) VALUES (?1, ?2, ?3, 'in_flight', ?4, ?5, ?6)")?
            .execute(params![r.api_key_id, r.key, r.request_hash, r.resource_id, r.created_at, r.expires_at])
            .map(|_| ()),
        Write::CompleteIdempotency { api_key_id, key, status, body } => tx
            .prepare_cached("UPDATE idempotency SET state = 'done', status = ?3, body = ?4 WHERE api_key_id = ?1 AND key = ?2")?
            .execute(params![api_key_id, key, i64::from(*status), body])
            .map(|_| ()),
    }
}

/// Journaled batches, in order, in one transaction with the applied-through marker.
fn apply_entries(c: &mut Connection, entries: &[Entry]) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for e in entries {
        for op in &e.ops {
            apply_op(&tx, op)?;
        }
    }
    if let Some(last) = entries.last() {
        tx.prepare_cached("UPDATE journal_applied SET seq = ?1")?.execute(params![last.seq as i64])?;
    }
    tx.commit()
}

/// A refusal that applying again would repeat (a constraint), as opposed to I/O trouble.
fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn json_text(v: &serde_json::Value) -> String {
    v.to_string()
}

impl Store for SqliteStore {
    /// In WAL mode with `synchronous=NORMAL` a commit is a write to the WAL and no fsync
    /// (tens of microseconds), so it runs inline; with `FULL` every commit waits on the disk.
    fn inline_ok(&self) -> bool {
        !self.synchronous_full
    }

    fn idem_get(&self, k: &str, key: &str, now: i64) -> StoreResult<Option<IdemState>> {
        self.with(|c| idem_live(c, k, key, now))
    }

    fn idem_release(&self, k: &str, key: &str, resource_id: &str) -> StoreResult<()> {
        self.with(|c| {
            c.prepare_cached(
                "DELETE FROM idempotency WHERE api_key_id = ?1 AND key = ?2 AND state IN ('in_flight', 'orphaned') AND resource_id = ?3",
            )?
            .execute(params![k, key, resource_id])
            .map(|_| ())
        })
    }

    fn idem_expire(&self, now: i64) -> StoreResult<usize> {
        // Records are appended in creation order, so the expired ones are a prefix of the
        // rowid order: delete up to the first live one, reading only what is deleted. After a
        // reload shortens the retention, a newer record may outlive its expiry behind an older
        // one; it is kept longer (at least the retention holds) and no longer answers, as
        // `idem_live` checks `expires_at`.
        self.with(|c| {
            c.prepare_cached(
                "DELETE FROM idempotency WHERE rowid < COALESCE(
                   (SELECT rowid FROM idempotency WHERE expires_at > ?1 ORDER BY rowid LIMIT 1),
                   (SELECT MAX(rowid) + 1 FROM idempotency))",
            )?
            .execute(params![now])
        })
    }

    fn write_batch(&self, ops: Vec<Write>) -> StoreResult<()> {
        let ops = if self.journal_writes && self.journal_ok.load(std::sync::atomic::Ordering::Relaxed) {
            match self.journal_batch(ops)? {
                None => return Ok(()),
                Some(ops) => ops,
            }
        } else {
            ops
        };
        let mut c = self.lock_conn()?;
        // The journal applied and then held until this commits: a claim journaled meanwhile
        // (checked against the committed rows, which do not show this one yet) would
        // otherwise win the same key.
        self.apply_locked(&mut c)?;
        let mut journal = self.lock_journal()?;
        // Appended since: applied with the journal held, so none can follow until the commit.
        let r = self.apply_pending(&mut c, Some(&mut journal));
        self.journal_ok.store(r.is_ok(), std::sync::atomic::Ordering::Relaxed);
        r?;
        // IMMEDIATE when a claim is in the batch: its check and its insert see the same state.
        let claims = ops.iter().any(|o| matches!(o, Write::ClaimIdempotency(_)));
        let tx = c.transaction_with_behavior(if claims {
            rusqlite::TransactionBehavior::Immediate
        } else {
            rusqlite::TransactionBehavior::Deferred
        })?;
        for op in &ops {
            if let Write::ClaimIdempotency(r) = op {
                // Dropping `tx` rolls the whole batch back.
                if let Some(s) = idem_live(&tx, &r.api_key_id, &r.key, r.created_at)? {
                    return Err(StoreError::KeyTaken(s));
                }
            }
            apply_op(&tx, op)?;
        }
        tx.commit()?;
        // Still under the journal lock: no claim is checked before its key is in the set.
        self.note_claims(&ops);
        Ok(())
    }

    fn insert_payment(&self, p: &PaymentRow) -> StoreResult<()> {
        self.with(|c| insert_payment(c, p))
    }

    fn update_payment(&self, p: &PaymentRow) -> StoreResult<Option<PaymentStatus>> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let before: Option<String> = tx
                .prepare_cached("SELECT status FROM payments WHERE id = ?1")?
                .query_row(params![p.id], |r| r.get(0))
                .optional()?;
            let written = update_payment(&tx, p)?;
            tx.commit()?;
            Ok(before.filter(|_| written).and_then(|s| PaymentStatus::parse(&s)))
        })
    }

    fn insert_attempt(&self, a: &AttemptRow) -> StoreResult<()> {
        self.with(|c| insert_attempt(c, a))
    }

    fn update_attempt(&self, a: &AttemptRow) -> StoreResult<()> {
        self.with(|c| update_attempt(c, a))
    }

    fn set_attempt_watch(&self, attempt_ref: &str, watch: bool) -> StoreResult<()> {
        self.with(|c| {
            c.prepare_cached("UPDATE attempts SET watch = ?2 WHERE attempt_ref = ?1")?
                .execute(params![attempt_ref, i64::from(watch)])
                .map(|_| ())
        })
    }

    fn settle_unknown_attempt(&self, attempt_ref: &str, outcome: &str) -> StoreResult<bool> {
        self.with(|c| {
            c.prepare_cached("UPDATE attempts SET outcome = ?2 WHERE attempt_ref = ?1 AND outcome = 'unknown'")?
                .execute(params![attempt_ref, outcome])
                .map(|n| n == 1)
        })
    }

    fn get_payment(&self, id: &str) -> StoreResult<Option<PaymentRow>> {
        self.one(&format!("SELECT {PAYMENT_COLS} FROM payments WHERE id = ?1"), params![id], payment_from_row)
    }

    fn payments_due(&self, now: i64, limit: usize) -> StoreResult<Vec<PaymentRow>> {
        let sql = format!(
            "SELECT {PAYMENT_COLS} FROM payments WHERE reconcile_at IS NOT NULL AND reconcile_at <= ?1 ORDER BY reconcile_at LIMIT ?2"
        );
        self.all(&sql, params![now, limit as i64], payment_from_row)
    }

    fn attempts(&self, payment_id: &str) -> StoreResult<Vec<AttemptRow>> {
        self.all(
            &format!("SELECT {ATTEMPT_COLS} FROM attempts WHERE payment_id = ?1 ORDER BY n"),
            params![payment_id],
            attempt_from_row,
        )
    }

    fn attempt_by_ref(&self, r: &str) -> StoreResult<Option<AttemptRow>> {
        let Some((payment_id, n)) = parse_attempt_ref(r) else { return Ok(None) };
        let sql = format!("SELECT {ATTEMPT_COLS} FROM attempts WHERE payment_id = ?1 AND n = ?2 AND attempt_ref = ?3");
        self.one(&sql, params![payment_id, n, r], attempt_from_row)
    }

    fn attempt_by_provider_ref(&self, ch: &str, pr: &str) -> StoreResult<Option<AttemptRow>> {
        let sql = format!("SELECT {ATTEMPT_COLS} FROM attempts WHERE channel = ?1 AND provider_ref = ?2");
        self.one(&sql, params![ch, pr], attempt_from_row)
    }

    fn watched_attempts(&self, after: Option<(&str, i64)>, limit: usize) -> StoreResult<Vec<AttemptRow>> {
        let (pid, n) = after.unwrap_or(("", 0));
        self.all(
            &format!(
                "SELECT {ATTEMPT_COLS} FROM attempts WHERE watch = 1 AND (payment_id, n) > (?1, ?2) ORDER BY payment_id, n LIMIT ?3"
            ),
            params![pid, n, limit as i64],
            attempt_from_row,
        )
    }

    fn reserve_refund(
        &self,
        payment_id: &str,
        refund_id: &str,
        amount: Option<i64>,
        reason: Option<&str>,
        now: i64,
    ) -> Result<RefundRow, ReserveFailure> {
        let r = self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let p = tx.prepare_cached(&format!("SELECT {PAYMENT_COLS} FROM payments WHERE id = ?1"))?.query_row(params![payment_id], payment_from_row).optional()?;
            let Some(p) = p else { return Ok(Err(RefundReserveError::NotFound)) };
            // Refunded in full is the payment's state, not an amount question.
            if !p.status.is_captured() || p.status == PaymentStatus::Refunded {
                return Ok(Err(RefundReserveError::NotCaptured(p.status)));
            }
            let reserved: i64 = tx.prepare_cached("SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE payment_id = ?1 AND status IN ('pending', 'succeeded')")?.query_row(params![payment_id],
                |r| r.get(0),)?;
            let remaining = p.amount - reserved;
            let amount = amount.unwrap_or(remaining);
            if amount <= 0 || amount > remaining {
                return Ok(Err(RefundReserveError::Exceeds { remaining }));
            }
            let row = RefundRow {
                id: refund_id.to_string(),
                payment_id: payment_id.to_string(),
                amount,
                currency: p.currency,
                status: "pending".into(),
                reason: reason.map(String::from),
                provider_refund_ref: None,
                error_code: None,
                created_at: now,
                updated_at: now,
            };
            tx.prepare_cached(&format!("INSERT INTO refunds ({REFUND_COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"))?.execute(params![row.id, row.payment_id, row.amount, row.currency.code(), row.status, row.reason, row.provider_refund_ref, row.error_code, row.created_at, row.updated_at],)?;
            tx.commit()?;
            Ok(Ok(row))
        });
        match r {
            Ok(Ok(row)) => Ok(row),
            Ok(Err(e)) => Err(ReserveFailure::Rule(e)),
            Err(e) => Err(ReserveFailure::Store(e)),
        }
    }

    fn update_refund(&self, r: &RefundRow, read: &str) -> StoreResult<RefundWrite> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let written = tx
                .prepare_cached(
                    "UPDATE refunds SET status=?2, provider_refund_ref=?3, error_code=?4, updated_at=?5 WHERE id=?1 AND status=?6",
                )?
                .execute(params![r.id, r.status, r.provider_refund_ref, r.error_code, r.updated_at, read])?
                == 1;
            let settled = if written { settle_refunds(&tx, &r.payment_id, r.updated_at)? } else { None };
            tx.commit()?;
            Ok(RefundWrite { written, settled })
        })
    }

    fn pending_refunds(&self, before: i64, limit: usize) -> StoreResult<Vec<RefundRow>> {
        let sql = format!("SELECT {REFUND_COLS} FROM refunds WHERE status = 'pending' AND updated_at <= ?1 ORDER BY updated_at LIMIT ?2");
        self.all(&sql, params![before, limit as i64], refund_from_row)
    }

    fn refunds(&self, payment_id: &str) -> StoreResult<Vec<RefundRow>> {
        let sql = format!("SELECT {REFUND_COLS} FROM refunds WHERE payment_id = ?1 ORDER BY created_at, id");
        self.all(&sql, params![payment_id], refund_from_row)
    }

    fn get_refund(&self, id: &str) -> StoreResult<Option<RefundRow>> {
        self.one(&format!("SELECT {REFUND_COLS} FROM refunds WHERE id = ?1"), params![id], refund_from_row)
    }

    fn recover_interrupted(&self, now: i64) -> StoreResult<(usize, usize)> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let queued = tx.prepare_cached("UPDATE payments SET
                   channel = (SELECT a.channel FROM attempts a WHERE a.payment_id = payments.id AND a.outcome = 'pending' ORDER BY a.n DESC LIMIT 1),
                   attempt_ref = (SELECT a.attempt_ref FROM attempts a WHERE a.payment_id = payments.id AND a.outcome = 'pending' ORDER BY a.n DESC LIMIT 1),
                   reconcile_at = ?1, reconcile_backoff_ms = 500, error_code = 'interrupted', updated_at = ?1
                 WHERE status = 'processing' AND reconcile_at IS NULL
                   AND EXISTS (SELECT 1 FROM attempts a WHERE a.payment_id = payments.id AND a.outcome = 'pending')")?.execute(params![now],)?;
            tx.prepare_cached("UPDATE attempts SET outcome = 'unknown', error_code = 'interrupted' WHERE outcome = 'pending'")?.execute([])?;
            // No request of the stopped process is still running: its claims are abandoned.
            tx.prepare_cached("UPDATE idempotency SET state = 'orphaned' WHERE state = 'in_flight'")?.execute([])?;
            let failed = tx.prepare_cached("UPDATE payments SET status = 'failed', error_code = 'interrupted_before_sending', error_message = 'paymux stopped before contacting any provider', updated_at = ?1
                 WHERE status = 'processing' AND reconcile_at IS NULL AND channel IS NULL
                   AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.payment_id = payments.id AND a.outcome IN ('pending', 'unknown', 'accepted', 'accepted_after_query', 'declined'))")?.execute(params![now],)?;
            tx.commit()?;
            Ok((queued, failed))
        })
    }

    fn checkpoint(&self) -> StoreResult<()> {
        let c = self.checkpointer.lock().map_err(|_| StoreError::Backend("checkpoint mutex poisoned".into()))?;
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).map_err(StoreError::from)
    }

    fn open_work_by_channel(&self) -> StoreResult<Vec<(String, i64)>> {
        // Non-final payments all carry a `reconcile_at` (the partial index); watched attempts
        // have their own partial index; pending refunds are few.
        self.all(
            "SELECT channel, COUNT(*) FROM (
               SELECT channel FROM payments WHERE reconcile_at IS NOT NULL
               UNION ALL SELECT channel FROM attempts WHERE watch = 1
               UNION ALL SELECT p.channel FROM refunds r JOIN payments p ON p.id = r.payment_id WHERE r.status = 'pending'
             ) WHERE channel IS NOT NULL GROUP BY channel ORDER BY channel",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    fn journal_backlog(&self) -> usize {
        self.journal.lock().map(|j| j.backlog()).unwrap_or(0)
    }

    fn webhook_seen(&self, channel: &str, event_id: &str, now: i64) -> StoreResult<bool> {
        self.with(|c| {
            c.prepare_cached(
                "INSERT OR IGNORE INTO webhook_events (channel, event_id, received_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![channel, event_id, now])
            .map(|n| n == 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(id: &str, status: PaymentStatus) -> PaymentRow {
        PaymentRow {
            id: id.into(),
            api_key_id: "k".into(),
            order_id: "o".into(),
            method: Method::Visa,
            amount: 1000,
            currency: Currency::parse("HKD").unwrap(),
            status,
            channel: Some("c".into()),
            attempt_ref: None,
            provider_ref: None,
            route_rule: "r".into(),
            next_action: None,
            error_code: None,
            error_message: None,
            refunded: 0,
            metadata: serde_json::json!({}),
            customer: serde_json::Value::Null,
            return_url: None,
            policy_version: "v".into(),
            created_at: 1,
            updated_at: 1,
            reconcile_at: None,
            reconcile_backoff_ms: 0,
        }
    }

    #[test]
    fn a_known_payer_action_is_not_erased_by_a_writer_that_read_the_row_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        let mut p = payment("pay_act", PaymentStatus::Processing);
        s.insert_payment(&p).unwrap();
        let stale = PaymentRow { status: PaymentStatus::RequiresAction, ..p.clone() };
        p.status = PaymentStatus::RequiresAction;
        p.next_action = Some(serde_json::json!({"type": "redirect", "url": "https://pay.example/1"}));
        assert!(s.update_payment(&p).unwrap().is_some());
        // Still waiting on the payer: the stale copy (no action) keeps the action.
        assert!(s.update_payment(&stale).unwrap().is_some());
        assert_eq!(s.get_payment("pay_act").unwrap().unwrap().next_action, p.next_action);
        // A newer action replaces it; leaving requires_action clears it.
        let newer = Some(serde_json::json!({"type": "redirect", "url": "https://pay.example/2"}));
        s.update_payment(&PaymentRow { next_action: newer.clone(), ..stale.clone() }).unwrap();
        assert_eq!(s.get_payment("pay_act").unwrap().unwrap().next_action, newer);
        s.update_payment(&PaymentRow { status: PaymentStatus::Succeeded, ..stale }).unwrap();
        assert_eq!(s.get_payment("pay_act").unwrap().unwrap().next_action, None);
    }

    fn claim(s: &SqliteStore, k: &str, key: &str, hash: &str, now: i64, exp: i64) -> IdemClaim {
        s.idem_claim(&IdemRecord {
            api_key_id: k.into(),
            key: key.into(),
            request_hash: hash.into(),
            resource_id: None,
            created_at: now,
            expires_at: exp,
        })
        .unwrap()
    }

    #[test]
    fn one_process_per_data_directory_and_its_claims_orphaned_after_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        assert!(SqliteStore::check_free(dir.path()).is_ok(), "nobody holds it");
        let s = SqliteStore::open(dir.path(), false).unwrap();
        let e = SqliteStore::open(dir.path(), false).err().unwrap().to_string();
        assert!(e.contains("in use by another paymux process"), "{e}");
        let e = SqliteStore::check_free(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another paymux process"), "{e}");
        // Also once the lock file is deleted (it may look stale after a crash).
        std::fs::remove_file(dir.path().join("paymux.lock")).unwrap();
        let e = SqliteStore::open(dir.path(), false).err().unwrap().to_string();
        assert!(e.contains("in use by another paymux process"), "{e}");
        assert!(SqliteStore::check_free(dir.path()).is_err());
        assert_eq!(claim(&s, "k", "key1", "h1", 10, 100), IdemClaim::Claimed);
        assert!(matches!(s.idem_get("k", "key1", 11).unwrap(), Some(IdemState::InFlight { orphaned: false, .. })));
        drop(s);
        // The next process marks what the stopped one had under way.
        let s = SqliteStore::open(dir.path(), false).unwrap();
        s.recover_interrupted(12).unwrap();
        assert!(matches!(s.idem_get("k", "key1", 12).unwrap(), Some(IdemState::InFlight { orphaned: true, .. })));
        // A claim made now is live.
        assert_eq!(claim(&s, "k", "key2", "h2", 13, 100), IdemClaim::Claimed);
        assert!(matches!(s.idem_get("k", "key2", 13).unwrap(), Some(IdemState::InFlight { orphaned: false, .. })));
    }

    #[test]
    fn schema_version_is_stamped_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("paymux.db");
        drop(SqliteStore::open(dir.path(), false).unwrap());
        let version = |c: &Connection| c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(version(&Connection::open(&db).unwrap()), SCHEMA_VERSION);
        // Reopening this build's database works.
        drop(SqliteStore::open(dir.path(), false).unwrap());

        // Unversioned but exactly version 1's layout (written just before versioning):
        // adopted and brought up to date.
        let v0 = tempfile::tempdir().unwrap();
        let c = Connection::open(v0.path().join("paymux.db")).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        drop(c);
        drop(SqliteStore::open(v0.path(), false).unwrap());
        assert_eq!(version(&Connection::open(v0.path().join("paymux.db")).unwrap()), SCHEMA_VERSION);

        // Version 1 (before the journal) is upgraded: its rows kept, the marker added.
        let v1 = tempfile::tempdir().unwrap();
        let c = Connection::open(v1.path().join("paymux.db")).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.pragma_update(None, "application_id", APPLICATION_ID).unwrap();
        insert_payment(&c, &payment("pay_v1", PaymentStatus::Succeeded)).unwrap();
        drop(c);
        let s = SqliteStore::open(v1.path(), false).unwrap();
        assert_eq!(s.get_payment("pay_v1").unwrap().unwrap().status, PaymentStatus::Succeeded);
        drop(s);
        let c = Connection::open(v1.path().join("paymux.db")).unwrap();
        assert_eq!(version(&c), 2);
        assert_eq!(c.query_row("SELECT seq FROM journal_applied", [], |r| r.get::<_, i64>(0)).unwrap(), 0);
        drop(c);

        // A newer build's database is refused, untouched.
        Connection::open(&db).unwrap().pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        let e = SqliteStore::open(dir.path(), false).err().unwrap().to_string();
        assert!(e.contains(&format!("schema version {}, from a newer build", SCHEMA_VERSION + 1)), "{e}");
        assert!(e.contains("paymux.db"), "{e}");
        assert_eq!(version(&Connection::open(&db).unwrap()), SCHEMA_VERSION + 1);

        // An unversioned older layout (here: the idempotency table without its rowid) is refused.
        let old = tempfile::tempdir().unwrap();
        let c = Connection::open(old.path().join("paymux.db")).unwrap();
        c.execute_batch(
            "CREATE TABLE idempotency (api_key_id TEXT, key TEXT, PRIMARY KEY (api_key_id, key)) WITHOUT ROWID;",
        )
        .unwrap();
        drop(c);
        let e = SqliteStore::open(old.path(), false).err().unwrap().to_string();
        assert!(e.contains("unversioned layout from an earlier build"), "{e}");

        // Unversioned, version 1's layout plus SQLite's own statistics table: adopted.
        let stats = tempfile::tempdir().unwrap();
        let c = Connection::open(stats.path().join("paymux.db")).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        c.execute_batch("ANALYZE;").unwrap();
        drop(c);
        drop(SqliteStore::open(stats.path(), false).unwrap());

        // Another application's SQLite file is refused, whatever its user_version.
        let foreign = tempfile::tempdir().unwrap();
        let c = Connection::open(foreign.path().join("paymux.db")).unwrap();
        c.pragma_update(None, "application_id", 42).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION).unwrap();
        drop(c);
        let e = SqliteStore::open(foreign.path(), false).err().unwrap().to_string();
        assert!(e.contains("not a paymux database"), "{e}");

        // Not an SQLite file at all: SQLite's words, and which file.
        let garbage = tempfile::tempdir().unwrap();
        let db = garbage.path().join("paymux.db");
        std::fs::write(&db, vec![7u8; 8192]).unwrap();
        let e = SqliteStore::open(garbage.path(), false).err().unwrap().to_string();
        assert!(e.contains(&format!("{}: file is not a database", db.display())), "{e}");
        // A data directory that is a file.
        let e = SqliteStore::open(&db, false).err().unwrap().to_string();
        assert!(e.ends_with("paymux.db is not a directory"), "{e}");
    }

    /// Fails when a released schema step changes (a database of that version would never
    /// get the change): add a new step to `MIGRATIONS` instead, then pin it here.
    #[test]
    fn released_schema_steps_never_change() {
        let hashes: Vec<String> = MIGRATIONS.iter().map(|m| crate::crypto::sha256_hex(m.as_bytes())).collect();
        assert_eq!(
            hashes,
            [
                "942dfc3ad09345f2afb7bdb909cc43f0aa010af59ffb9d16e1c08de1e2611cb8",
                "dd46ec62593498560ef6e4f412d9b6e7541d76e9e5e3ae5eeeab7f43f149babb",
            ],
            "a released schema step changed: add a new step to MIGRATIONS instead"
        );
        assert_eq!(SCHEMA_VERSION, 2);
    }

    #[test]
    fn idempotency_claim_replay_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        assert_eq!(claim(&s, "k", "key1", "h1", 10, 100), IdemClaim::Claimed);
        assert!(matches!(claim(&s, "k", "key1", "h1", 11, 100), IdemClaim::Existing(IdemState::InFlight { .. })));
        // Keys are scoped per API key.
        assert_eq!(claim(&s, "other", "key1", "h1", 11, 100), IdemClaim::Claimed);
        s.idem_complete("k", "key1", 201, b"{}").unwrap();
        assert_eq!(
            claim(&s, "k", "key1", "h2", 12, 100),
            IdemClaim::Existing(IdemState::Done { request_hash: "h1".into(), status: 201, body: b"{}".to_vec() })
        );
        // Release is compare-and-delete on the linked resource.
        let r1 = IdemRecord {
            api_key_id: "k".into(),
            key: "key2".into(),
            request_hash: "h".into(),
            resource_id: Some("r1".into()),
            created_at: 10,
            expires_at: 100,
        };
        assert_eq!(s.idem_claim(&r1).unwrap(), IdemClaim::Claimed);
        s.idem_release("k", "key2", "r0").unwrap();
        assert!(s.idem_get("k", "key2", 10).unwrap().is_some(), "another request's claim was released");
        s.idem_release("k", "key2", "r1").unwrap();
        assert_eq!(s.idem_get("k", "key2", 10).unwrap(), None);
        assert_eq!(s.idem_expire(100).unwrap(), 2);
        assert_eq!(claim(&s, "k", "key1", "h2", 101, 200), IdemClaim::Claimed);
    }

    #[test]
    fn a_key_is_known_taken_whichever_way_it_was_stored() {
        // Real clock readings: the key set loads the records live at open.
        let now = now_ms();
        let day = 86_400_000;
        let taken = |s: &SqliteStore, key: &str, at: i64| {
            matches!(claim(s, "k", key, "h", at, at + day), IdemClaim::Existing(_))
        };
        let dir = tempfile::tempdir().unwrap();
        {
            // Committed at once (`synchronous=FULL` does not journal).
            let s = SqliteStore::open(dir.path(), true).unwrap();
            assert_eq!(claim(&s, "k", "full", "h", now, now + day), IdemClaim::Claimed);
        }
        {
            let s = SqliteStore::open(dir.path(), false).unwrap();
            assert!(taken(&s, "full", now + 1), "stored by an earlier run");
            // Journaled, then applied (no longer in the journal's own key list).
            assert_eq!(claim(&s, "k", "journaled", "h", now, now + day), IdemClaim::Claimed);
            s.apply_journal().unwrap();
            assert!(taken(&s, "journaled", now + 1));
            // Committed directly while the journal is not trusted, then journaling again.
            s.journal_ok.store(false, std::sync::atomic::Ordering::Relaxed);
            assert_eq!(claim(&s, "k", "direct", "h", now, now + day), IdemClaim::Claimed);
            s.journal_ok.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(taken(&s, "direct", now + 1));
            // Left in the journal for the next run to apply.
            assert_eq!(claim(&s, "k", "replayed", "h", now, now + day), IdemClaim::Claimed);
            // An expired record does not hold its key.
            assert_eq!(claim(&s, "k", "expired", "h", now - 2 * day, now - day), IdemClaim::Claimed);
        }
        let s = SqliteStore::open(dir.path(), false).unwrap();
        for key in ["full", "journaled", "direct", "replayed"] {
            assert!(taken(&s, key, now + 2), "{key}");
        }
        assert_eq!(claim(&s, "k", "expired", "h", now + 2, now + day), IdemClaim::Claimed);
        assert_eq!(claim(&s, "k", "new", "h", now + 2, now + day), IdemClaim::Claimed);
        s.apply_journal().unwrap();
        // A set no longer trusted (past capacity, or poisoned) sends every claim to the database.
        s.lock_keys().saturate();
        assert!(taken(&s, "new", now + 3));
        assert!(!taken(&s, "other", now + 3));
    }

    #[test]
    fn a_key_whose_record_just_expired_is_still_taken_after_the_clock_steps_back() {
        let now = now_ms();
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path(), false).unwrap();
            assert_eq!(claim(&s, "k", "k1", "h", now - 3_600_000, now - 600_000), IdemClaim::Claimed);
        }
        // Expired by the clock at open; live by a request's clock 20 minutes earlier.
        let s = SqliteStore::open(dir.path(), false).unwrap();
        assert!(matches!(claim(&s, "k", "k1", "h", now - 1_200_000, now), IdemClaim::Existing(_)));
    }

    #[test]
    fn keys_past_the_sets_capacity_at_open_are_checked_in_the_database_until_they_expire() {
        let now = now_ms();
        let (day, hour) = (86_400_000, 3_600_000);
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SqliteStore::open(dir.path(), false).unwrap();
            for k in ["k1", "k2", "k3", "k4", "k5"] {
                assert_eq!(claim(&s, "k", k, "h", now, now + day), IdemClaim::Claimed);
            }
        }
        // Room for three: the newest three are loaded; the other two are left out, and no
        // claim may take them for new while their records live.
        let s = SqliteStore::open_with(dir.path(), false, 3).unwrap();
        assert_eq!(s.lock_keys().len(), 3);
        assert_eq!(s.lock_keys().unknown_until(), now + day);
        for k in ["k1", "k2", "k3", "k4", "k5"] {
            assert!(matches!(claim(&s, "k", k, "h", now + 1, now + day), IdemClaim::Existing(_)), "{k}");
        }
        // Once those have expired the set answers on its own again.
        assert!(!s.lock_keys().may_hold("k", "never-seen", now + day));
        assert!(s.lock_keys().may_hold("k", "k5", now + day));
        assert_eq!(claim(&s, "k", "new", "h", now + 2, now + 2 + day), IdemClaim::Claimed);
        let later = now + day + hour;
        assert_eq!(claim(&s, "k", "k1", "h", later, later + day), IdemClaim::Claimed);
    }

    #[test]
    fn a_key_set_a_panic_left_behind_is_not_trusted() {
        let now = now_ms();
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStore::open(dir.path(), false).unwrap());
        assert_eq!(claim(&s, "k", "k1", "h", now, now + 86_400_000), IdemClaim::Claimed);
        s.apply_journal().unwrap();
        let s2 = s.clone();
        let poisoner = std::thread::spawn(move || {
            let _held = s2.keys.lock().unwrap();
            panic!("a panic while the key set is locked (expected by this test)");
        });
        assert!(poisoner.join().is_err());
        assert!(s.lock_keys().saturated());
        assert!(matches!(claim(&s, "k", "k1", "h", now + 1, now + 86_400_000), IdemClaim::Existing(_)));
        assert_eq!(claim(&s, "k", "k2", "h", now + 1, now + 86_400_000), IdemClaim::Claimed);
    }

    #[test]
    fn concurrent_claims_of_the_same_keys_claim_each_once() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStore::open(dir.path(), false).unwrap());
        SqliteStore::spawn_applier(&s, std::time::Duration::from_millis(1));
        const KEYS: usize = 300;
        let claimed: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        // The journal distrusted now and then: those claims commit directly.
        let toggler = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    s.journal_ok.fetch_xor(true, Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_micros(300));
                }
                s.journal_ok.store(true, Ordering::Relaxed);
            })
        };
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (s, claimed) = (s.clone(), claimed.clone());
                std::thread::spawn(move || {
                    for i in 0..KEYS {
                        // Each thread its own order over the same keys.
                        let k = (i * 7 + t * 101) % KEYS;
                        let now = now_ms();
                        if claim(&s, "k", &format!("key-{k}"), "h", now, now + 86_400_000) == IdemClaim::Claimed {
                            claimed[k].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        toggler.join().unwrap();
        let counts: Vec<usize> = claimed.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert!(counts.iter().all(|&c| c == 1), "claims per key: {counts:?}");
        s.apply_journal().unwrap();
        assert_eq!(rows_in_db(dir.path(), "idempotency"), KEYS as i64);
    }

    fn rows_in_db(dir: &Path, table: &str) -> i64 {
        Connection::open(dir.join("paymux.db"))
            .unwrap()
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    fn journal_files(dir: &Path) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with("journal-"))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap().len()))
            .collect();
        v.sort();
        v
    }

    fn create_batch(id: &str, key: &str) -> Vec<Write> {
        vec![
            Write::ClaimIdempotency(IdemRecord {
                api_key_id: "k".into(),
                key: key.into(),
                request_hash: "h".into(),
                resource_id: Some(id.into()),
                created_at: 10,
                expires_at: 100,
            }),
            Write::InsertPayment(payment(id, PaymentStatus::Processing)),
            Write::InsertAttempt(AttemptRow::pending(id, 1, "stripe_hk", 10)),
        ]
    }

    #[test]
    fn journaled_batches_read_back_at_once_and_survive_a_kill() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        s.write_batch(create_batch("p1", "key1")).unwrap();
        // In the journal, not yet in the database...
        assert_eq!(rows_in_db(dir.path(), "payments"), 0);
        assert_eq!(s.journal_backlog(), 1);
        assert_eq!(journal_files(dir.path()).len(), 1);
        assert!(journal_files(dir.path())[0].1 > 0);
        // ...yet every read sees it (a read applies the journal first).
        assert_eq!(s.get_payment("p1").unwrap().unwrap().status, PaymentStatus::Processing);
        assert_eq!(s.journal_backlog(), 0);
        assert_eq!(rows_in_db(dir.path(), "payments"), 1);
        assert_eq!(journal_files(dir.path())[0].1, 0, "applied records are dropped from the file");

        // Two more batches journaled, then the process dies before applying them (dropping
        // the store applies nothing; the next open must).
        s.write_batch(create_batch("p2", "key2")).unwrap();
        let mut done = payment("p2", PaymentStatus::Succeeded);
        done.channel = Some("stripe_hk".into());
        s.write_batch(vec![
            Write::UpdatePayment(done),
            Write::CompleteIdempotency {
                api_key_id: "k".into(),
                key: "key2".into(),
                status: 201,
                body: b"{\"id\":\"p2\"}".to_vec(),
            },
        ])
        .unwrap();
        drop(s);
        assert_eq!(rows_in_db(dir.path(), "payments"), 1);
        let s = SqliteStore::open(dir.path(), false).unwrap();
        assert_eq!(rows_in_db(dir.path(), "payments"), 2, "replayed at open, before serving");
        let p2 = s.get_payment("p2").unwrap().unwrap();
        assert_eq!((p2.status, p2.channel.as_deref()), (PaymentStatus::Succeeded, Some("stripe_hk")));
        assert_eq!(s.attempts("p2").unwrap().len(), 1);
        match s.idem_get("k", "key2", 11).unwrap() {
            Some(IdemState::Done { status: 201, body, .. }) => assert_eq!(body, b"{\"id\":\"p2\"}"),
            other => panic!("{other:?}"),
        }
        assert!(journal_files(dir.path()).iter().all(|(_, len)| *len == 0), "{:?}", journal_files(dir.path()));
    }

    #[test]
    fn replay_applies_each_record_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        s.write_batch(create_batch("p1", "key1")).unwrap();
        let (name, _) = journal_files(dir.path()).remove(0);
        let kept = std::fs::read(dir.path().join(&name)).unwrap();
        assert_eq!(s.apply_journal().unwrap(), 1);
        // A later write moves the payment on.
        assert_eq!(
            s.update_payment(&payment("p1", PaymentStatus::Succeeded)).unwrap(),
            Some(PaymentStatus::Processing)
        );
        drop(s);
        // As if the process had died after the commit but before the journal file was emptied.
        std::fs::write(dir.path().join(&name), &kept).unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        assert_eq!(
            s.get_payment("p1").unwrap().unwrap().status,
            PaymentStatus::Succeeded,
            "an applied record was replayed"
        );
        assert!(!dir.path().join("journal-rejected.jsonl").exists());
        assert!(journal_files(dir.path()).iter().all(|(n, len)| *len == 0 || *n != name));
    }

    #[test]
    fn a_claim_is_checked_against_writes_still_in_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        s.write_batch(create_batch("p1", "key1")).unwrap();
        // The first claim is only in the journal: a second one must still lose.
        match s.write_batch(create_batch("p2", "key1")) {
            Err(StoreError::KeyTaken(IdemState::InFlight { resource_id, .. })) => {
                assert_eq!(resource_id.as_deref(), Some("p1"))
            }
            other => panic!("{other:?}"),
        }
        assert!(s.get_payment("p2").unwrap().is_none());
        // Applied, then completed in the journal: a retry gets the stored response, not 409.
        s.write_batch(vec![Write::CompleteIdempotency {
            api_key_id: "k".into(),
            key: "key1".into(),
            status: 201,
            body: b"{}".to_vec(),
        }])
        .unwrap();
        match s.write_batch(create_batch("p3", "key1")) {
            Err(StoreError::KeyTaken(IdemState::Done { status: 201, .. })) => {}
            other => panic!("{other:?}"),
        }
        // And once all is applied, the claim check reads the database (the reader connection).
        s.apply_journal().unwrap();
        match s.write_batch(create_batch("p4", "key1")) {
            Err(StoreError::KeyTaken(IdemState::Done { status: 201, .. })) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(rows_in_db(dir.path(), "payments"), 1);
        // While the main connection is busy (the applier holds it), the check reads the
        // committed state on the reader connection, and journaling never waits for it.
        let busy = s.conn.lock().unwrap();
        match s.write_batch(create_batch("p6", "key1")) {
            Err(StoreError::KeyTaken(IdemState::Done { status: 201, .. })) => {}
            other => panic!("{other:?}"),
        }
        s.write_batch(create_batch("p5", "key5")).unwrap();
        drop(busy);
        assert!(s.get_payment("p5").unwrap().is_some());
        assert!(s.get_payment("p6").unwrap().is_none());
    }

    #[test]
    fn a_batch_the_database_refuses_is_set_aside_and_the_rest_applied() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        s.insert_payment(&payment("p1", PaymentStatus::Processing)).unwrap();
        // A second insert of the same id cannot apply (a bug upstream); it must neither block
        // the batches after it nor vanish.
        s.write_batch(vec![Write::InsertPayment(payment("p1", PaymentStatus::Failed))]).unwrap();
        s.write_batch(create_batch("p2", "key2")).unwrap();
        assert_eq!(s.apply_journal().unwrap(), 2);
        assert!(s.get_payment("p2").unwrap().is_some());
        assert_eq!(s.get_payment("p1").unwrap().unwrap().status, PaymentStatus::Processing);
        let aside = std::fs::read_to_string(dir.path().join("journal-rejected.jsonl")).unwrap();
        assert!(aside.contains("\"p1\"") && aside.contains("UNIQUE constraint failed"), "{aside}");
        drop(s);
        // Nothing is replayed again at the next start.
        let s = SqliteStore::open(dir.path(), false).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("journal-rejected.jsonl")).unwrap(), aside);
        assert_eq!(s.get_payment("p1").unwrap().unwrap().status, PaymentStatus::Processing);
    }

    #[test]
    fn while_the_database_refuses_the_journal_nothing_is_lost_or_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        s.insert_payment(&payment("p1", PaymentStatus::Processing)).unwrap();
        s.write_batch(vec![Write::InsertPayment(payment("p1", PaymentStatus::Failed))]).unwrap();
        s.write_batch(create_batch("p2", "key2")).unwrap();
        // The set-aside file cannot be written (a directory stands in its way).
        let aside = dir.path().join("journal-rejected.jsonl");
        std::fs::create_dir(&aside).unwrap();
        assert!(s.apply_journal().is_err());
        // Meanwhile a new batch is not acknowledged from the journal alone.
        assert!(s.write_batch(create_batch("p3", "key3")).is_err());
        std::fs::remove_dir(&aside).unwrap();
        // Once it can, everything journaled lands: p2 is not lost, p1's duplicate set aside.
        s.apply_journal().unwrap();
        assert!(s.get_payment("p2").unwrap().is_some());
        assert!(std::fs::read_to_string(&aside).unwrap().contains("\"p1\""));
        s.write_batch(create_batch("p3", "key3")).unwrap();
        assert!(s.get_payment("p3").unwrap().is_some());
        drop(s);
        let s = SqliteStore::open(dir.path(), false).unwrap();
        assert!(s.get_payment("p2").unwrap().is_some() && s.get_payment("p3").unwrap().is_some());
    }

    #[test]
    fn with_synchronous_full_batches_are_committed_not_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), true).unwrap();
        s.write_batch(create_batch("p1", "key1")).unwrap();
        assert_eq!(rows_in_db(dir.path(), "payments"), 1);
        assert!(journal_files(dir.path()).iter().all(|(_, len)| *len == 0));
    }

    #[test]
    fn a_batch_whose_claim_is_taken_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        let rec = |resource: &str| IdemRecord {
            api_key_id: "k".into(),
            key: "key1".into(),
            request_hash: "h1".into(),
            resource_id: Some(resource.into()),
            created_at: 10,
            expires_at: 100,
        };
        s.write_batch(vec![
            Write::ClaimIdempotency(rec("p1")),
            Write::InsertPayment(payment("p1", PaymentStatus::Processing)),
        ])
        .unwrap();
        let second = s.write_batch(vec![
            Write::ClaimIdempotency(rec("p2")),
            Write::InsertPayment(payment("p2", PaymentStatus::Processing)),
        ]);
        match second {
            Err(StoreError::KeyTaken(IdemState::InFlight { resource_id, .. })) => {
                assert_eq!(resource_id.as_deref(), Some("p1"))
            }
            other => panic!("expected KeyTaken, got {other:?}"),
        }
        assert!(s.get_payment("p2").unwrap().is_none(), "the rolled-back batch stored its payment");
        assert!(s.get_payment("p1").unwrap().is_some());
        // Completing in the payment's last batch makes the key replay the stored response.
        s.write_batch(vec![
            Write::UpdatePayment(payment("p1", PaymentStatus::Succeeded)),
            Write::CompleteIdempotency {
                api_key_id: "k".into(),
                key: "key1".into(),
                status: 201,
                body: b"{}".to_vec(),
            },
        ])
        .unwrap();
        assert!(matches!(s.idem_get("k", "key1", 11).unwrap(), Some(IdemState::Done { status: 201, .. })));
        assert_eq!(s.idem_get("k", "key1", 100).unwrap(), None, "expired records are not live");
    }

    #[test]
    fn attempts_are_found_by_their_reference() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        let id = crate::domain::new_id("pay");
        let a = AttemptRow::pending(&id, 2, "c", 1);
        s.write_batch(vec![
            Write::InsertPayment(payment(&id, PaymentStatus::Processing)),
            Write::InsertAttempt(a.clone()),
        ])
        .unwrap();
        assert_eq!(s.attempt_by_ref(&format!("{id}-a2")).unwrap(), Some(a.clone()));
        for missing in
            [format!("{id}-a1"), format!("{id}-a"), format!("{id}-a-2"), id.clone(), "-a2".into(), String::new()]
        {
            assert_eq!(s.attempt_by_ref(&missing).unwrap(), None, "{missing}");
        }
        assert_eq!(parse_attempt_ref("pay_X-a12"), Some(("pay_X", 12)));

        // Watched attempts page in key order.
        let mut ops = vec![];
        for n in 3..6 {
            let mut w = a.clone();
            (w.n, w.attempt_ref, w.watch) = (n, attempt_ref(&id, n), true);
            ops.push(Write::InsertAttempt(w));
        }
        s.write_batch(ops).unwrap();
        let first = s.watched_attempts(None, 2).unwrap();
        assert_eq!(first.iter().map(|w| w.n).collect::<Vec<_>>(), [3, 4]);
        let rest = s.watched_attempts(Some((&id, 4)), 2).unwrap();
        assert_eq!(rest.iter().map(|w| w.n).collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn idempotency_records_expire_in_creation_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        for (key, exp) in [("a", 100), ("b", 200), ("c", 150), ("d", 300)] {
            assert_eq!(claim(&s, "k", key, "h", 10, exp), IdemClaim::Claimed);
        }
        assert_eq!(s.idem_expire(99).unwrap(), 0);
        assert_eq!(s.idem_expire(160).unwrap(), 1, "only the expired prefix goes");
        // `c` expired but sits behind the live `b`: kept, and no longer answers.
        assert_eq!(s.idem_get("k", "c", 160).unwrap(), None);
        assert!(s.idem_get("k", "b", 160).unwrap().is_some());
        assert_eq!(s.idem_expire(250).unwrap(), 2);
        assert_eq!(s.idem_expire(1000).unwrap(), 1);
        assert_eq!(s.idem_expire(1000).unwrap(), 0);
    }

    #[test]
    fn final_status_never_regresses() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        s.insert_payment(&payment("p1", PaymentStatus::Succeeded)).unwrap();
        assert_eq!(s.update_payment(&payment("p1", PaymentStatus::Processing)).unwrap(), None, "refused");
        assert_eq!(s.get_payment("p1").unwrap().unwrap().status, PaymentStatus::Succeeded);
        // Money taken is never made failed (a stale writer after an inferred failure's correction).
        assert_eq!(s.update_payment(&payment("p1", PaymentStatus::Failed)).unwrap(), None, "refused");
        assert_eq!(s.get_payment("p1").unwrap().unwrap().status, PaymentStatus::Succeeded);
        // Nor refunded but by its refunds' settlement.
        assert_eq!(s.update_payment(&payment("p1", PaymentStatus::Refunded)).unwrap(), None, "refused");
        // A write reports the status it replaced; the provider canceling a paid payment is
        // one of the two corrections of a final status.
        assert_eq!(s.update_payment(&payment("p1", PaymentStatus::Canceled)).unwrap(), Some(PaymentStatus::Succeeded));
        assert_eq!(s.get_payment("p1").unwrap().unwrap().status, PaymentStatus::Canceled);
        // And nothing moves a canceled one (a stale notify's `succeeded`).
        assert_eq!(s.update_payment(&payment("p1", PaymentStatus::Succeeded)).unwrap(), None, "refused");
        assert_eq!(s.update_payment(&payment("nope", PaymentStatus::Refunded)).unwrap(), None);
        // The other correction: succeeded over a failure paymux only inferred.
        let mut inferred = payment("p2", PaymentStatus::Failed);
        inferred.error_code = Some(INFERRED_FAILURE.into());
        s.insert_payment(&inferred).unwrap();
        assert_eq!(s.update_payment(&payment("p2", PaymentStatus::Succeeded)).unwrap(), Some(PaymentStatus::Failed));
        s.insert_payment(&payment("p3", PaymentStatus::Failed)).unwrap();
        assert_eq!(s.update_payment(&payment("p3", PaymentStatus::Succeeded)).unwrap(), None, "a decline stays");
    }

    #[test]
    fn refunds_never_exceed_the_captured_amount() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        s.insert_payment(&payment("p1", PaymentStatus::Succeeded)).unwrap();
        s.insert_payment(&payment("p2", PaymentStatus::Processing)).unwrap();
        assert!(matches!(
            s.reserve_refund("p2", "r0", None, None, 1),
            Err(ReserveFailure::Rule(RefundReserveError::NotCaptured(_)))
        ));
        let r1 = s.reserve_refund("p1", "r1", Some(600), None, 1).unwrap();
        assert_eq!(r1.amount, 600);
        assert!(matches!(
            s.reserve_refund("p1", "r2", Some(500), None, 1),
            Err(ReserveFailure::Rule(RefundReserveError::Exceeds { remaining: 400 }))
        ));
        let mut failed = r1.clone();
        failed.status = "failed".into();
        assert!(s.update_refund(&failed, "pending").unwrap().written);
        // A writer whose copy is stale (it read pending) changes nothing.
        let mut late = r1.clone();
        late.status = "succeeded".into();
        assert!(!s.update_refund(&late, "pending").unwrap().written);
        assert_eq!(s.get_refund("r1").unwrap().unwrap().status, "failed");
        assert_eq!(s.reserve_refund("p1", "r3", None, None, 1).unwrap().amount, 1000);
        assert!(!s.webhook_seen("c", "e1", 1).unwrap());
        assert!(s.webhook_seen("c", "e1", 2).unwrap());
    }

    #[test]
    fn refund_totals_are_settled_by_the_settlement_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), false).unwrap();
        let stale = payment("p1", PaymentStatus::Succeeded);
        s.insert_payment(&stale).unwrap();
        let r1 = s.reserve_refund("p1", "r1", Some(300), None, 1).unwrap();
        let mut done = r1.clone();
        // Still pending (its provider's answer in doubt): no change to the payment.
        done.error_code = Some("timeout".into());
        let w = s.update_refund(&done, "pending").unwrap();
        assert!(w.written && w.settled.is_none(), "{w:?}");
        done.status = "succeeded".into();
        let w = s.update_refund(&done, "pending").unwrap();
        let (p, before) = w.settled.unwrap();
        assert_eq!((p.status, p.refunded, before), (PaymentStatus::PartiallyRefunded, 300, PaymentStatus::Succeeded));
        let w = s.update_refund(&done, "pending").unwrap();
        assert!(!w.written && w.settled.is_none(), "a stale writer writes nothing");
        // A writer holding the row from before the refund (a cancel the payer's approval
        // overtook) writes neither `succeeded` nor its zero total over it.
        assert_eq!(s.update_payment(&stale).unwrap(), None, "refused");
        let mut other = payment("p1", PaymentStatus::PartiallyRefunded);
        other.refunded = 0;
        assert_eq!(s.update_payment(&other).unwrap(), Some(PaymentStatus::PartiallyRefunded));
        let now = s.get_payment("p1").unwrap().unwrap();
        assert_eq!((now.status, now.refunded), (PaymentStatus::PartiallyRefunded, 300));
        // A refund that fails after all gives the amount back: the settlement writes succeeded.
        done.status = "failed".into();
        let (p, _) = s.update_refund(&done, "succeeded").unwrap().settled.unwrap();
        assert_eq!((p.status, p.refunded), (PaymentStatus::Succeeded, 0));
    }
}
