//! Hot reload: the same load pipeline as startup, all-or-nothing, serialised; triggered by a
//! debounced watch of the config directory, SIGHUP, or `POST /admin/reload`. A rejected
//! reload is logged, audited and counted, and the old policy keeps serving.

use crate::audit::{AuditLog, Event};
use crate::config::{self, Diagnostic, Overrides};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::store::Store;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What a reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    Applied {
        old: String,
        new: String,
        restart_required: Vec<&'static str>,
    },
    /// Nothing new; `restart_required` still names what an earlier reload changed.
    Unchanged {
        version: String,
        restart_required: Vec<&'static str>,
    },
    Rejected {
        version: String,
        errors: Vec<Diagnostic>,
    },
}

/// Reloads the policy from its directory.
pub struct Reloader {
    dir: PathBuf,
    overrides: Overrides,
    policy: Arc<ArcSwap<Policy>>,
    metrics: Arc<Metrics>,
    audit: AuditLog,
    /// Asked before a channel is removed: one still holding unsettled payments must stay.
    store: Arc<dyn Store>,
    /// The settings bound when the server started, which a reload cannot change.
    bound: Bound,
    lock: tokio::sync::Mutex<()>,
}

/// Listeners, data directory, the store's durability and TLS material, as they run.
struct Bound {
    listen: String,
    admin_listen: String,
    data_dir: PathBuf,
    synchronous_full: bool,
    tls: Option<(PathBuf, PathBuf)>,
}

impl Reloader {
    /// A reloader for `dir` publishing into `policy`.
    pub fn new(
        dir: PathBuf,
        overrides: Overrides,
        policy: Arc<ArcSwap<Policy>>,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        store: Arc<dyn Store>,
    ) -> Self {
        let s = policy.load().server.clone();
        let bound = Bound {
            listen: s.listen,
            admin_listen: s.admin_listen,
            data_dir: s.data_dir,
            synchronous_full: s.synchronous_full,
            tls: s.tls,
        };
        Reloader { dir, overrides, policy, metrics, audit, store, bound, lock: tokio::sync::Mutex::new(()) }
    }

    /// Keeps the settings bound at start in `new`, so that the published policy says what
    /// runs (the readiness probe connects to its `listen`); returns those the config
    /// changes, which take effect after a restart. A config put back to the running values
    /// needs none.
    fn keep_bound(&self, new: &mut Policy) -> Vec<&'static str> {
        fn keep<T: PartialEq + Clone>(
            name: &'static str,
            configured: &mut T,
            running: &T,
            changed: &mut Vec<&'static str>,
        ) {
            if configured != running {
                changed.push(name);
                configured.clone_from(running);
            }
        }
        let (b, s) = (&self.bound, &mut new.server);
        let mut changed = vec![];
        keep("listen", &mut s.listen, &b.listen, &mut changed);
        keep("admin_listen", &mut s.admin_listen, &b.admin_listen, &mut changed);
        keep("data_dir", &mut s.data_dir, &b.data_dir, &mut changed);
        keep("store.synchronous", &mut s.synchronous_full, &b.synchronous_full, &mut changed);
        keep("tls", &mut s.tls, &b.tls, &mut changed);
        new.restart_required.clone_from(&changed);
        changed
    }

    /// Errors for channels the new policy drops, or gives to another connector, endpoint or
    /// account, while they still hold unsettled work: their callbacks would be refused and their payments could no
    /// longer be synced, canceled or refunded.
    async fn removed_channels_in_use(&self, old: &Policy, new: &Policy) -> Vec<Diagnostic> {
        // Removed, or made another provider's, endpoint's or account's under the same id: its
        // payments' callbacks and queries would go to, or be read as, a party that does not
        // hold them (and a status query answered "no such payment" fails a charged payment).
        // A new key for the same account (a rotation) is no such change.
        // A channel retired earlier (removed while a create was out) still holds what that
        // create left: given back under its id, it must be the same provider again.
        let retired = old.retired.iter().map(|c| (c, true));
        let gone: Vec<(String, &str)> = old
            .channels
            .iter()
            .map(|c| (c, false))
            .chain(retired)
            .filter_map(|(c, was_retired)| match new.channel(&c.id) {
                None if was_retired => None,
                None => Some((c.id.clone(), "removed")),
                Some(n) if n.kind != c.kind => Some((c.id.clone(), "changed to another connector")),
                Some(n) if n.transport.endpoint() != c.transport.endpoint() => {
                    Some((c.id.clone(), "moved to another base_url"))
                }
                Some(n) if n.connector.account() != c.connector.account() => {
                    Some((c.id.clone(), "moved to another account"))
                }
                Some(_) => None,
            })
            .collect();
        if gone.is_empty() {
            return vec![];
        }
        let at = |message: String| {
            Diagnostic {
            file: self.dir.display().to_string(),
            line: 1,
            col: 1,
            message,
            help: Some(
                "take the channel out of routing first; remove or change it once its payments are final (or give the new provider a new channel id)"
                    .into(),
            ),
        }
        };
        match crate::store::call(&self.store, |s| s.open_work_by_channel()).await {
            Ok(open) => open
                .into_iter()
                .filter_map(|(c, n)| {
                    let (_, how) = gone.iter().find(|(id, _)| *id == c)?;
                    Some(at(format!(
                        "channel `{c}` is {how} but still holds {n} unsettled payment(s), refund(s) or watched attempt(s)"
                    )))
                })
                .collect(),
            Err(e) => vec![at(format!("could not check whether removed or changed channels still hold payments: {e}"))],
        }
    }

    /// The config directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Loads, validates, compiles and (if valid and different) publishes the policy.
    pub async fn reload(&self, trigger: &str, request_id: Option<&str>) -> ReloadOutcome {
        let _serial = self.lock.lock().await;
        let old = self.policy.load_full();
        let (dir, ov) = (self.dir.clone(), self.overrides.clone());
        let loaded = tokio::task::spawn_blocking(move || config::load_dir(&dir, &ov)).await.unwrap_or_else(|e| {
            Err(vec![Diagnostic {
                file: String::new(),
                line: 1,
                col: 1,
                message: format!("reload task failed: {e}"),
                help: None,
            }])
        });
        let loaded = match loaded {
            Ok(new) => {
                let in_use = self.removed_channels_in_use(&old, &new).await;
                if in_use.is_empty() {
                    Ok(new)
                } else {
                    Err(in_use)
                }
            }
            Err(e) => Err(e),
        };
        let outcome = match loaded {
            Err(errors) => ReloadOutcome::Rejected { version: old.version.clone(), errors },
            Ok(new) if new.version == old.version => ReloadOutcome::Unchanged {
                version: old.version.clone(),
                restart_required: old.restart_required.clone(),
            },
            Ok(mut new) => {
                new.retire_from(&old);
                let restart_required = self.keep_bound(&mut new);
                let version = new.version.clone();
                self.metrics.init_series(&new);
                self.policy.store(Arc::new(new));
                self.metrics.set_version(&version);
                ReloadOutcome::Applied { old: old.version.clone(), new: version, restart_required }
            }
        };
        let (label, details) = match &outcome {
            ReloadOutcome::Applied { old, new, restart_required } => {
                tracing::info!(trigger, old = %old, new = %new, "config reloaded");
                if !restart_required.is_empty() {
                    tracing::warn!(fields = ?restart_required, "changed settings take effect after a restart");
                }
                (
                    "applied",
                    json!({"trigger": trigger, "old_version": old, "new_version": new, "restart_required": restart_required}),
                )
            }
            ReloadOutcome::Unchanged { version, .. } => {
                tracing::info!(trigger, version = %version, "config read again: nothing changed");
                ("unchanged", json!({"trigger": trigger, "old_version": version, "new_version": version}))
            }
            ReloadOutcome::Rejected { version, errors } => {
                // One line per error (the help as a field, not a second line a log shipper
                // would split off).
                for e in errors {
                    tracing::error!(
                        trigger,
                        help = e.help.as_deref(),
                        "config rejected: {}:{}:{}: {}",
                        e.file,
                        e.line,
                        e.col,
                        e.message
                    );
                }
                let errs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                ("rejected", json!({"trigger": trigger, "old_version": version, "new_version": null, "errors": errs}))
            }
        };
        self.metrics.config_reloads.with_label_values(&[label]).inc();
        self.audit
            .record(Event {
                // An admin request's id, so its record and this one are found together.
                request_id: request_id.map(String::from),
                actor: format!("system:{trigger}"),
                action: "config.reload",
                payment_id: None,
                outcome: label.into(),
                details,
            })
            .await;
        outcome
    }
}

/// Background service: file watcher (debounced) and SIGHUP.
pub struct ReloadService {
    pub reloader: Arc<Reloader>,
    pub debounce: Duration,
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // `true`: the directory itself was replaced (renamed over, deleted and recreated), so
        // its watch must be set up again on the new one.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
        // Absolute but not resolved: `routes` may be a symlink a deploy flips to a new release.
        let dir = std::path::absolute(self.reloader.dir()).unwrap_or_else(|_| self.reloader.dir().to_path_buf());
        let parent = dir.parent().map(std::path::Path::to_path_buf);
        // Watch the directory, not the files: editors replace files by rename. Watch its parent
        // too, for the directory being replaced as a whole (a deploy that swaps in a new one).
        let me = dir.clone();
        let mut watcher = match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                if !matches!(ev.kind, notify::EventKind::Access(_)) {
                    let replaced = ev.paths.iter().any(|p| p == &me);
                    let inside = ev.paths.iter().any(|p| p.parent() == Some(me.as_path()));
                    if replaced || inside {
                        let _ = tx.send(replaced);
                    }
                }
            }
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "config watcher unavailable; use SIGHUP or /admin/reload");
                None
            }
        };
        if let Some(w) = watcher.as_mut() {
            if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                tracing::error!(error = %e, "cannot watch the config directory");
            }
            if let Some(Err(e)) = parent.as_deref().map(|p| w.watch(p, RecursiveMode::NonRecursive)) {
                tracing::warn!(error = %e, "cannot watch the config directory's parent; a replaced directory needs SIGHUP");
            }
        }
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP handler unavailable");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(first) = rx.recv() => {
                    // Debounce: wait for the burst of events an editor's save makes to end.
                    let mut replaced = first;
                    while let Ok(Some(r)) = tokio::time::timeout(self.debounce, rx.recv()).await {
                        replaced |= r;
                    }
                    if replaced {
                        if let Some(w) = watcher.as_mut() {
                            // The old watch followed the old directory; watch what is there now.
                            let _ = w.unwatch(&dir);
                            if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                                tracing::error!(error = %e, "cannot watch the replaced config directory; use SIGHUP or /admin/reload");
                            }
                        }
                    }
                    self.reloader.reload("watch", None).await;
                }
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    self.reloader.reload("sighup", None).await;
                }
            }
        }
        drop(watcher);
    }
}
