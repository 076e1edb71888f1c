//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/admin/reload`, `/admin/config`.
//! Bind it to a private interface; it has no authentication of its own yet.

use crate::api::http_util::{json, text};
use crate::api::problem::Problem;
use crate::audit::Event;
use crate::engine::Engine;
use crate::policy::Policy;
use crate::reload::{ReloadOutcome, Reloader};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

/// The admin app.
pub struct AdminApp {
    pub policy: Arc<ArcSwap<Policy>>,
    pub engine: Engine,
    pub reloader: Arc<Reloader>,
    /// The disk write probe's state (see `room_to_write`).
    pub write_probe: Arc<tokio::sync::Mutex<WriteProbe>>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let method = s.req_header().method.clone();
        let path = s.req_header().uri.path().to_string();
        let rid = crate::domain::new_id("req");
        // HEAD is GET without the body (the session leaves the body out, RFC 9110 §9.3.2).
        let verb = if method == http::Method::HEAD { "GET" } else { method.as_str() };
        match (verb, path.as_str()) {
            ("GET", "/metrics") => {
                let m = &self.engine.metrics;
                m.store_journal_backlog.set(self.engine.store.journal_backlog() as i64);
                text(200, "text/plain; version=0.0.4; charset=utf-8", m.render())
            }
            ("GET", "/healthz") => json(200, br#"{"status":"ok"}"#.to_vec(), &[]),
            ("GET", "/readyz") => {
                let read = crate::store::call(&self.engine.store, |s| s.get_payment("readyz-probe"));
                let read_ok = matches!(tokio::time::timeout(std::time::Duration::from_secs(2), read).await, Ok(Ok(_)));
                let room = self.room_to_write().await;
                let store_ok = read_ok && room;
                let p = self.policy.load_full();
                // The payments listener must be accepting, not just this admin one.
                let api_ok = tokio::time::timeout(
                    std::time::Duration::from_millis(500),
                    tokio::net::TcpStream::connect(p.server.listen.as_str()),
                )
                .await
                .is_ok_and(|r| r.is_ok());
                let ready = store_ok && api_ok;
                let body = serde_json::to_vec(&json!({
                    "ready": ready,
                    "policy_version": p.version,
                    "store": match (read_ok, room) {
                        (true, true) => "ok",
                        (true, false) => "no room to write",
                        _ => "unavailable",
                    },
                    "payments_listener": if api_ok { "ok" } else { "not accepting" },
                }))
                .unwrap_or_default();
                json(if ready { 200 } else { 503 }, body, &[])
            }
            ("GET", "/admin/config") => {
                let p = self.policy.load_full();
                let sources: Vec<_> = p.sources.iter().map(|s| json!({"path": s.path, "sha256": s.sha256})).collect();
                let loaded = p.loaded_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                let channels: Vec<_> = p.channels.iter().map(|c| json!({"id": c.id, "connector": c.kind, "methods": c.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>()})).collect();
                let retired: Vec<&str> = p.retired.iter().map(|c| c.id.as_str()).collect();
                let store = self.engine.store.clone();
                let pol = p.clone();
                let stranded = crate::store::call(&store, move |s| Ok(crate::server::stranded_channels(s, &pol)))
                    .await
                    .unwrap_or_default();
                let stranded: Vec<_> = stranded.iter().map(|(c, n)| json!({"channel": c, "open": n})).collect();
                let body = json!({"version": p.version, "loaded_at": loaded, "sources": sources, "channels": channels, "retired_channels": retired, "stranded_channels": stranded, "rules": p.router.rules().len(), "restart_required": p.restart_required});
                json(200, serde_json::to_vec(&body).unwrap_or_default(), &[])
            }
            ("POST", "/admin/reload") => {
                self.engine
                    .audit
                    .record(Event {
                        request_id: Some(rid.clone()),
                        actor: "admin".into(),
                        action: "admin.reload",
                        payment_id: None,
                        outcome: "requested".into(),
                        details: json!({}),
                    })
                    .await;
                match self.reloader.reload("admin", Some(&rid)).await {
                    ReloadOutcome::Applied { old, new, restart_required } => {
                        json(200, serde_json::to_vec(&json!({"outcome": "applied", "old_version": old, "version": new, "restart_required": restart_required})).unwrap_or_default(), &[])
                    }
                    // Settings changed by an earlier reload may still wait for a restart.
                    ReloadOutcome::Unchanged { version, restart_required } => {
                        json(200, serde_json::to_vec(&json!({"outcome": "unchanged", "version": version, "restart_required": restart_required})).unwrap_or_default(), &[])
                    }
                    ReloadOutcome::Rejected { version, errors } => {
                        let mut p = Problem::new(422, "config_rejected", format!("the new config has {} error(s); version {version} keeps serving", errors.len()));
                        p.errors = crate::config::diag::sorted(&errors).into_iter().map(|e| crate::api::problem::FieldError { field: format!("{}:{}:{}", e.file, e.line, e.col), message: e.message.clone(), help: e.help.clone() }).collect();
                        crate::api::http_util::problem(&p, &rid)
                    }
                }
            }
            (_, "/admin/reload" | "/admin/config" | "/metrics" | "/healthz" | "/readyz") => {
                let allow = if path == "/admin/reload" { "POST" } else { "GET, HEAD" };
                let mut p = Problem::new(405, "method_not_allowed", format!("this endpoint accepts {allow} only"));
                p.allow = Some(allow);
                crate::api::http_util::problem(&p, &rid)
            }
            _ => crate::api::http_util::problem(
                &Problem::new(
                    404,
                    "not_found",
                    "no such admin endpoint; it serves GET /metrics, /healthz, /readyz, /admin/config and POST /admin/reload",
                ),
                &rid,
            ),
        }
    }
}

impl AdminApp {
    /// Whether the data directory takes a write: one probe at a time, at most one a second,
    /// and a disk that does not answer within 2 s counts as no room. A probe still stuck on a
    /// hung disk is waited for, never started again beside it (each would hold a thread of the
    /// pool the store's calls use).
    async fn room_to_write(&self) -> bool {
        let mut probe = self.write_probe.lock().await;
        if let Some(running) = probe.running.as_mut() {
            if !running.is_finished() {
                return false;
            }
            let ok = matches!(running.await, Ok(true));
            (probe.running, probe.last) = (None, Some((std::time::Instant::now(), ok)));
        }
        if let Some((at, ok)) = probe.last {
            if at.elapsed() < std::time::Duration::from_secs(1) {
                return ok;
            }
        }
        let data_dir = self.policy.load().server.data_dir.clone();
        let mut running = tokio::task::spawn_blocking(move || can_write(&data_dir));
        match tokio::time::timeout(std::time::Duration::from_secs(2), &mut running).await {
            Ok(done) => {
                let ok = matches!(done, Ok(true));
                probe.last = Some((std::time::Instant::now(), ok));
                ok
            }
            Err(_) => {
                probe.running = Some(running);
                false
            }
        }
    }
}

/// The readiness probe's write test: the last result, and one still running.
#[derive(Default)]
pub struct WriteProbe {
    last: Option<(std::time::Instant, bool)>,
    running: Option<tokio::task::JoinHandle<bool>>,
}

/// Bytes the readiness probe writes: more than a payment's write batch, so a data directory
/// too full to take the next payment is not ready.
const PROBE_BYTES: usize = 64 * 1024;

/// Whether the data directory takes a write (synced, then removed): a full disk or a mount
/// gone read-only fails every payment while reads still work.
fn can_write(dir: &std::path::Path) -> bool {
    use std::io::Write;
    let path = dir.join(".readyz-probe");
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    written.is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_write_probe_needs_a_writable_directory_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(super::can_write(dir.path()));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Not a directory anyone can write in, root included.
        assert!(!super::can_write(std::path::Path::new("/proc")));
        assert!(!super::can_write(&dir.path().join("gone")));
    }
}
