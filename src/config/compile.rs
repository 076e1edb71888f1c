//! Semantic checks and compilation of typed config into the immutable [`Policy`].
//!
//! Checks: exactly one `server` file and one `default` route; unique channel ids and rule
//! names; rules name known channels that can serve the rule's methods and currencies; amounts
//! exact in each currency's exponent; no rule that can never match (disjoint methods and
//! categories, min > max) or is shadowed by an earlier rule; secrets and keys load.

use super::diag::{suggest, Diagnostic};
use super::raw::*;
use super::{secret_ref, Overrides, Parsed};
use crate::connector::{self, antom::Antom, stripe::Stripe, transport::Transport, Connector};
use crate::domain::{Currency, Method};
use crate::policy::routing::{AmountRange, MethodSet, Router, Rule, Target};
use crate::policy::{ApiKey, Channel, Policy, ServerSettings, SourceFile};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Files that passed the schema, deserialized.
#[derive(Default)]
pub struct Typed {
    server: Vec<(Parsed, RawServer)>,
    channels: Vec<(Parsed, RawChannels)>,
    routing: Vec<(Parsed, RawRouting)>,
}

impl Typed {
    /// Adds a schema-valid document of `kind`.
    pub fn add(&mut self, kind: &str, p: Parsed) -> Result<(), Diagnostic> {
        let err = |p: &Parsed, e: serde_json::Error| p.diag("", format!("invalid {kind} file: {e}"));
        // JSON Schema counts `500.0` as an integer; so does the typed stage.
        let mut doc = p.doc.clone();
        integral_numbers_as_integers(&mut doc);
        match kind {
            "server" => match serde_json::from_value(doc) {
                Ok(r) => self.server.push((p, r)),
                Err(e) => return Err(err(&p, e)),
            },
            "channels" => match serde_json::from_value(doc) {
                Ok(r) => self.channels.push((p, r)),
                Err(e) => return Err(err(&p, e)),
            },
            "routing" => match serde_json::from_value(doc) {
                Ok(r) => self.routing.push((p, r)),
                Err(e) => return Err(err(&p, e)),
            },
            _ => {}
        }
        Ok(())
    }
}

/// Rewrites numbers with no fractional part (`500.0`, `1e3`) as integers, as JSON Schema's
/// `integer` type already accepted them.
fn integral_numbers_as_integers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15) {
                *n = serde_json::Number::from(f as i64);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(integral_numbers_as_integers),
        serde_json::Value::Object(o) => o.values_mut().for_each(integral_numbers_as_integers),
        _ => {}
    }
}

/// What compilation binds besides validating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Validate only: secret references and host names are checked for form, not resolved, so
    /// a config can be checked on a machine without the production secrets (CI, a laptop).
    Check,
    /// Also read secrets, load keys and resolve provider host names: what `serve` needs.
    Serve,
}

/// What a rule check needs to know about a channel.
struct Spec {
    id: String,
    methods: MethodSet,
    currencies: Option<Vec<Currency>>,
}

/// Compiles typed files into a policy, collecting every semantic error. In `Mode::Check` the
/// result is `Ok(None)` when the config is valid.
pub fn compile(t: Typed, dir: &Path, ov: &Overrides, mode: Mode) -> Result<Option<Policy>, Vec<Diagnostic>> {
    let mut d = Vec::new();
    let dir_diag =
        |m: &str| Diagnostic { file: dir.display().to_string(), line: 1, col: 1, message: m.into(), help: None };

    // --- server
    if t.server.is_empty() {
        d.push(dir_diag("no file of kind `server`").with_help("add a server.yaml (see examples/)"));
    }
    for (p, _) in t.server.iter().skip(1) {
        d.push(p.diag("/kind", format!("a second `server` file; the first is {}", t.server[0].0.file)));
    }
    let server = t.server.first().map(|(p, r)| server_settings(p, r, dir, ov, mode, &mut d));

    // --- channels
    let public_base = server.as_ref().map(|s| s.public_base_url.clone()).unwrap_or_default();
    let mut channels: Vec<Arc<Channel>> = Vec::new();
    let mut specs: Vec<Spec> = Vec::new();
    // Digests of resolved secrets go into the version, so rotating a secret file or variable
    // and reloading takes effect (the YAML text alone did not change).
    let mut secret_digests: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut first_def: HashMap<String, String> = HashMap::new();
    for (p, raw) in &t.channels {
        for (i, c) in raw.channels.iter().enumerate() {
            let base = format!("/channels/{i}");
            if let Some(prev) = first_def.get(&c.id) {
                d.push(p.diag_value(
                    &format!("{base}/id"),
                    format!("duplicate channel id `{}` (first defined at {prev})", c.id),
                ));
                continue;
            }
            let pos = p.spans.locate_value(&format!("{base}/id"));
            first_def.insert(c.id.clone(), format!("{}:{}:{}", p.file, pos.line, pos.col));
            if let Some((spec, ch)) = build_channel(p, &base, c, &public_base, mode, &mut d, &mut secret_digests) {
                index.insert(c.id.clone(), specs.len());
                specs.push(spec);
                if let Some(ch) = ch {
                    channels.push(Arc::new(ch));
                }
            }
        }
    }
    if t.channels.is_empty() {
        d.push(dir_diag("no file of kind `channels`"));
    }
    // An attempt that times out is followed by a status query before any backup: the request
    // deadline must leave it at least a second, or it is never sent.
    if let Some(s) = &server {
        let deadline = s.request_deadline.as_millis();
        for (p, raw) in &t.channels {
            for (i, c) in raw.channels.iter().enumerate() {
                let attempt = c.timeouts.attempt_ms.unwrap_or(3000);
                if deadline < u128::from(attempt) + QUERY_ROOM_MS {
                    let at = match c.timeouts.attempt_ms {
                        Some(_) => format!("/channels/{i}/timeouts/attempt_ms"),
                        None => format!("/channels/{i}/id"),
                    };
                    d.push(
                        p.diag_value(
                            &at,
                            format!(
                                "channel `{}`: an attempt of {attempt} ms and its status query do not fit in the request deadline ({deadline} ms)",
                                c.id
                            ),
                        )
                        .with_help(match u128::from(attempt) + QUERY_ROOM_MS {
                            need if need <= 120_000 => {
                                format!("raise `limits.request_deadline_ms` to {need} or more, or lower `timeouts.attempt_ms`")
                            }
                            _ => "lower `timeouts.attempt_ms`".to_string(),
                        }),
                    );
                }
            }
        }
    }

    // --- routing
    let mut rules: Vec<(Rule, &Parsed, String)> = Vec::new();
    let mut default: Option<Target> = None;
    let mut default_at: Option<String> = None;
    let mut names: HashMap<String, String> = HashMap::new();
    let known: Vec<&str> = first_def.keys().map(String::as_str).collect();
    for (p, raw) in &t.routing {
        if let Some(def) = &raw.default {
            if let Some(prev) = &default_at {
                d.push(p.diag("/default", format!("a second `default` route (first at {prev})")));
            } else {
                let pos = p.spans.locate("/default");
                default_at = Some(format!("{}:{}:{}", p.file, pos.line, pos.col));
                default = target(p, "/default", def, &index, &known, &mut d);
            }
        }
        for (i, r) in raw.rules.iter().enumerate() {
            let base = format!("/rules/{i}");
            if let Some(prev) = names.get(&r.name) {
                d.push(p.diag_value(
                    &format!("{base}/name"),
                    format!("duplicate rule name `{}` (first at {prev})", r.name),
                ));
                continue;
            }
            let pos = p.spans.locate_value(&format!("{base}/name"));
            names.insert(r.name.clone(), format!("{}:{}:{}", p.file, pos.line, pos.col));
            if let Some(rule) = build_rule(p, &base, r, &specs, &index, &known, &mut d) {
                rules.push((rule, p, base));
            }
        }
    }
    if default_at.is_none() {
        match t.routing.first() {
            Some((p, _)) => d.push(
                p.diag("", "no `default` route in any routing file")
                    .with_help("add `default: { channels: [...] }` to catch payments no rule matches"),
            ),
            None => d.push(dir_diag("no file of kind `routing`")),
        }
    }

    // Shadowed rules: an earlier rule that matches everything a later one matches.
    let compiled: Vec<&Rule> = rules.iter().map(|(r, _, _)| r).collect();
    for (j, i) in crate::policy::routing::shadowed(&compiled) {
        let ((rj, pj, bj), (ri, _, _)) = (&rules[j], &rules[i]);
        d.push(
            pj.diag_value(
                &format!("{bj}/name"),
                format!(
                    "rule `{}` is shadowed by earlier rule `{}`: every payment it matches is matched first by `{}`",
                    rj.name, ri.name, ri.name
                ),
            )
            .with_help(if rj.covers(ri) {
                // Each covers the other: moving one above the other shadows that one instead.
                format!("`{}` and `{}` match the same payments: remove one, or make them differ", ri.name, rj.name)
            } else {
                format!("move `{}` above `{}`, or narrow `{}`", rj.name, ri.name, ri.name)
            }),
        );
    }

    if !d.is_empty() {
        return Err(d);
    }
    let Some(server) = server else { return Err(d) };
    if mode == Mode::Check {
        return Ok(None);
    }
    let mut sources: Vec<SourceFile> = t
        .server
        .iter()
        .map(|(p, _)| p)
        .chain(t.channels.iter().map(|(p, _)| p))
        .chain(t.routing.iter().map(|(p, _)| p))
        .map(|p| SourceFile { path: p.file.clone(), sha256: p.sha256.clone() })
        .collect();
    sources.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = String::new();
    for s in &sources {
        h.push_str(&s.path);
        h.push('\0');
        h.push_str(&s.sha256);
        h.push('\n');
    }
    for dg in &secret_digests {
        h.push_str(dg);
        h.push('\n');
    }
    // The settings bound at start, as resolved now: the same files reached through a flipped
    // symlink can put the store elsewhere, which a reload must report (restart_required),
    // not take for "unchanged".
    let tls = server.tls.as_ref().map(|(c, k)| format!("{}\0{}", physical(c).display(), physical(k).display()));
    h.push_str(&format!(
        "{}\0{}\0{}\0{}\0{}\n",
        server.listen,
        server.admin_listen,
        server.data_dir.display(),
        server.synchronous_full,
        tls.unwrap_or_default()
    ));
    let version = crate::crypto::sha256_hex(h.as_bytes())[..16].to_string();
    let api_keys = t.server[0]
        .1
        .api_keys
        .iter()
        .filter_map(|k| {
            let b = crate::crypto::unhex(&k.sha256)?;
            Some(ApiKey { id: k.id.clone(), sha256: b.try_into().ok()? })
        })
        .collect();
    Ok(Some(Policy {
        version,
        loaded_at: time::OffsetDateTime::now_utc(),
        sources,
        server,
        channels,
        channel_index: index,
        router: Router::new(rules.into_iter().map(|(r, _, _)| r).collect(), default),
        api_keys,
        retired: vec![],
        restart_required: vec![],
    }))
}

/// Why the TLS listener could not serve with this certificate chain and private key (PEM
/// files), if it could not: found now, not by the listener's thread at start.
fn unusable_tls(cert: &Path, key: &Path) -> Option<String> {
    let (c, k) = (cert.to_string_lossy(), key.to_string_lossy());
    match pingora::tls::load_certs_and_key_files(&c, &k) {
        Err(e) => Some(format!("cannot load the certificate or key: {e}")),
        Ok(None) => Some(format!(
            "`{c}` must hold a PEM certificate (BEGIN CERTIFICATE) and `{k}` a PEM private key (BEGIN PRIVATE KEY, \
             RSA PRIVATE KEY or EC PRIVATE KEY)"
        )),
        Ok(Some((certs, key))) => {
            pingora::tls::install_default_crypto_provider();
            let config = pingora::tls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key);
            config.err().map(|e| format!("the private key `{k}` does not serve the certificate `{c}`: {e}"))
        }
    }
}

/// `path` as the file system resolves it now: component by component, symlinks and `..`
/// resolved as the kernel would while they exist, and the rest (not created yet) read
/// lexically (`..` there takes off the component before it).
fn physical(path: &Path) -> PathBuf {
    use std::path::Component;
    // Without a working directory (removed under the process), a relative path stays as it is.
    let Ok(abs) = std::env::current_dir().map(|cwd| cwd.join(path)) else { return path.to_path_buf() };
    let (mut out, mut exists) = (PathBuf::from("/"), true);
    for c in abs.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            // `out` has no symlinks while it exists, so its parent is the kernel's `..`; past a
            // part not created yet (created, it will be a plain directory), maybe back to
            // one that exists.
            Component::ParentDir => {
                out.pop();
                if let (false, Ok(real)) = (exists, out.canonicalize()) {
                    (out, exists) = (real, true);
                }
            }
            Component::Normal(name) => {
                out.push(name);
                if exists {
                    match out.canonicalize() {
                        Ok(real) => out = real,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    out
}

/// How long, at least, the request deadline must leave for the status query after a channel's
/// attempt timed out.
const QUERY_ROOM_MS: u128 = 1000;

/// True when two listen addresses (`host:port`) cannot both be bound: the same port on the
/// same host, or on a wildcard address (`0.0.0.0`, `[::]`, which take the port on every
/// address), `localhost` taken as 127.0.0.1. Other names are not resolved (a check runs
/// offline).
fn same_socket(a: &str, b: &str) -> bool {
    let (Some((ha, pa)), Some((hb, pb))) = (host_port(a), host_port(b)) else { return a == b };
    let ip = |h: &str| match h {
        "localhost" => Some(std::net::IpAddr::from([127, 0, 0, 1])),
        _ => h.parse::<std::net::IpAddr>().ok(),
    };
    let same_host = match (ip(&ha), ip(&hb)) {
        (Some(x), Some(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
        _ => ha == hb,
    };
    pa == pb && same_host
}

/// A listen address split into its host (lower-cased, without IPv6 brackets) and port.
fn host_port(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase(), port.parse().ok()?))
}

fn server_settings(
    p: &Parsed,
    r: &RawServer,
    dir: &Path,
    ov: &Overrides,
    mode: Mode,
    d: &mut Vec<Diagnostic>,
) -> ServerSettings {
    let rel = |s: &str| {
        let pb = Path::new(s);
        if pb.is_absolute() {
            pb.to_path_buf()
        } else {
            dir.join(pb)
        }
    };
    let (mut seen, mut hashes) = (HashMap::new(), HashMap::new());
    for (i, k) in r.api_keys.iter().enumerate() {
        if seen.insert(k.id.clone(), i).is_some() {
            d.push(p.diag_value(&format!("/api_keys/{i}/id"), format!("duplicate api key id `{}`", k.id)));
        }
        // One key, two ids: which id it authenticates as (whose payments and idempotency
        // keys it sees) would hang on the order of the list.
        if let Some(first) = hashes.insert(k.sha256.to_ascii_lowercase(), k.id.clone()) {
            d.push(p.diag_value(
                &format!("/api_keys/{i}/sha256"),
                format!("the same key as api key `{first}`: each key belongs to one id"),
            ));
        }
    }
    let tls = r.tls.as_ref().map(|t| (rel(&t.cert_file), rel(&t.key_file)));
    if let Some((c, k)) = &tls {
        for (f, ptr) in [(c, "/tls/cert_file"), (k, "/tls/key_file")] {
            if !f.is_file() {
                d.push(p.diag_value(ptr, format!("file `{}` does not exist", f.display())));
            }
        }
        if c.is_file() && k.is_file() {
            if let Some(e) = unusable_tls(c, k) {
                d.push(p.diag_value("/tls/cert_file", e));
            }
        }
    }
    for (ptr, addr) in [("/listen", &r.listen), ("/admin_listen", &r.admin_listen)] {
        if host_port(addr).is_none_or(|(_, port)| port == 0) {
            d.push(p.diag_value(ptr, format!("`{}` needs a port between 1 and 65535", &ptr[1..])));
        }
    }
    let (listen, admin) =
        (ov.listen.as_ref().unwrap_or(&r.listen), ov.admin_listen.as_ref().unwrap_or(&r.admin_listen));
    let clash = same_socket(listen, admin);
    if clash && ov.listen.is_none() && ov.admin_listen.is_none() {
        d.push(p.diag_value(
            "/admin_listen",
            format!("`admin_listen` ({admin}) takes the same port as `listen` ({listen}); give it another port"),
        ));
    } else if clash {
        let message = format!(
            "the payments API and the admin listener would both listen on {listen} (--listen / --admin-listen)"
        );
        d.push(Diagnostic { file: dir.display().to_string(), line: 1, col: 1, message, help: None });
    }
    let (initial, max) =
        (r.reconciler.initial_backoff_ms.unwrap_or(500), r.reconciler.max_backoff_ms.unwrap_or(60_000));
    if initial > max {
        let ptr = if r.reconciler.initial_backoff_ms.is_some() {
            "/reconciler/initial_backoff_ms"
        } else {
            "/reconciler/max_backoff_ms"
        };
        d.push(
            p.diag_value(ptr, format!("`reconciler.initial_backoff_ms` ({initial}) is above `max_backoff_ms` ({max})")),
        );
    }
    let retention_hours = r.idempotency.retention_hours.unwrap_or(24);
    // Where the store is, as the file system resolves it now: a config directory's symlink
    // flipped later does not move a running paymux's store, and a reload sees the move.
    let data_dir = physical(&ov.data_dir.clone().unwrap_or_else(|| r.data_dir.as_deref().map_or("data".into(), rel)));
    // The default was `data` in the config directory: a store left there must not be passed
    // over for an empty one (where a retried payment is charged again).
    let earlier = dir.join("data");
    let moved = physical(&earlier) != data_dir;
    if ov.data_dir.is_none() && r.data_dir.is_none() && moved && earlier.join("paymux.db").exists() {
        let message = format!(
            "{} holds paymux's store (the default data directory of earlier versions, inside the config directory); \
             the default is now `data` in the working directory: move it outside the config directory and set \
             `data_dir` (or --data-dir) to where it is",
            earlier.display()
        );
        d.push(Diagnostic { file: dir.display().to_string(), line: 1, col: 1, message, help: None });
    } else if data_dir.starts_with(physical(dir))
        && (mode == Mode::Serve || ov.data_dir.is_some() || r.data_dir.is_some())
    {
        // (The default's place depends on the working directory `serve` runs in, which a
        // check does not know.)
        let whose = if ov.data_dir.is_none() && r.data_dir.is_none() {
            " (the default, `data` in the working directory)"
        } else {
            ""
        };
        let msg = format!(
            "data directory {}{whose} is inside the config directory: a deploy that replaces the directory or flips \
             its symlink would leave the payments store behind, and paymux would start with an empty one (where a \
             retried payment is charged again); set `data_dir` (or --data-dir) outside it, e.g. `../data`",
            data_dir.display()
        );
        match (&ov.data_dir, &r.data_dir) {
            (None, Some(_)) => d.push(p.diag_value("/data_dir", msg)),
            _ => d.push(Diagnostic { file: dir.display().to_string(), line: 1, col: 1, message: msg, help: None }),
        }
    }
    // The flag is held to an absolute http(s) URL, as the file's field is by its schema:
    // providers are told to call back there, and Antom refuses a notify URL of another form.
    // A base the callback paths are appended to: no query or fragment.
    let base_url = |u: &str| crate::domain::is_http_url(u) && !u.contains(['?', '#']);
    let why = "is not an absolute http(s) URL without a query or fragment: providers call back under it \
               (e.g. https://pay.example.com)";
    match &ov.public_base_url {
        Some(url) if !base_url(url) => d.push(Diagnostic {
            file: dir.display().to_string(),
            line: 1,
            col: 1,
            message: format!("--public-base-url `{url}` {why}"),
            help: None,
        }),
        None if !base_url(&r.public_base_url) => {
            d.push(p.diag_value("/public_base_url", format!("`public_base_url` {why}")))
        }
        _ => {}
    }
    ServerSettings {
        listen: ov.listen.clone().unwrap_or_else(|| r.listen.clone()),
        admin_listen: ov.admin_listen.clone().unwrap_or_else(|| r.admin_listen.clone()),
        public_base_url: ov.public_base_url.as_deref().unwrap_or(&r.public_base_url).trim_end_matches('/').to_string(),
        data_dir,
        tls,
        max_body_bytes: r.limits.max_body_bytes.unwrap_or(65536) as usize,
        request_deadline: Duration::from_millis(u64::from(r.limits.request_deadline_ms.unwrap_or(10_000))),
        header_timeout: Duration::from_millis(u64::from(r.limits.header_timeout_ms.unwrap_or(30_000))),
        idempotency_retention: Duration::from_secs(u64::from(retention_hours) * 3600),
        synchronous_full: r.store.synchronous.as_deref() == Some("full"),
        reconcile_interval: Duration::from_millis(u64::from(r.reconciler.interval_ms.unwrap_or(1000))),
        reconcile_initial_backoff: Duration::from_millis(u64::from(initial)),
        reconcile_max_backoff: Duration::from_millis(u64::from(max)),
    }
}

fn parse_currency(p: &Parsed, ptr: &str, code: &str, d: &mut Vec<Diagnostic>) -> Option<Currency> {
    match Currency::parse(code) {
        Ok(c) => Some(c),
        Err(_) => {
            let all: Vec<String> = Currency::all().map(|c| c.code().to_string()).collect();
            let mut dg =
                p.diag_value(ptr, format!("unknown currency `{code}`: not an ISO 4217 code with a minor unit"));
            if let Some(s) = suggest(code, all.iter().map(String::as_str)) {
                dg = dg.with_help(format!("did you mean `{s}`?"));
            }
            d.push(dg);
            None
        }
    }
}

fn build_channel(
    p: &Parsed,
    base: &str,
    c: &RawChannel,
    public_base: &str,
    mode: Mode,
    d: &mut Vec<Diagnostic>,
    secret_digests: &mut Vec<String>,
) -> Option<(Spec, Option<Channel>)> {
    let before = d.len();
    let carriable = connector::kind_methods(&c.connector);
    let mut methods = Vec::new();
    for (j, m) in c.methods.iter().enumerate() {
        let Some(m) = Method::parse(m) else { continue };
        if !carriable.contains(&m) {
            let names: Vec<&str> = carriable.iter().map(|m| m.as_str()).collect();
            d.push(
                p.diag_value(&format!("{base}/methods/{j}"), format!("connector `{}` cannot carry `{m}`", c.connector))
                    .with_help(format!("`{}` carries: {}", c.connector, names.join(", "))),
            );
        }
        methods.push(m);
    }
    let currencies = c.currencies.as_ref().map(|cs| {
        let mut v: Vec<Currency> = cs
            .iter()
            .enumerate()
            .filter_map(|(j, s)| parse_currency(p, &format!("{base}/currencies/{j}"), s, d))
            .collect();
        v.sort();
        v
    });
    // Needs no secret: checked offline too.
    if let Some(sc) = c.antom.as_ref().and_then(|a| a.settlement_currency.as_ref()) {
        parse_currency(p, &format!("{base}/antom/settlement_currency"), sc, d);
    }
    if mode == Mode::Check {
        if reqwest::Url::parse(&c.base_url).is_err() {
            d.push(p.diag_value(&format!("{base}/base_url"), "unusable base URL"));
        }
        if d.len() > before {
            return None;
        }
        return Some((Spec { id: c.id.clone(), methods: MethodSet::of(methods), currencies }, None));
    }
    let connect = Duration::from_millis(u64::from(c.timeouts.connect_ms.unwrap_or(1000)));
    let attempt = Duration::from_millis(u64::from(c.timeouts.attempt_ms.unwrap_or(3000)));
    let mut secret = |ptr: &str, r: &str, d: &mut Vec<Diagnostic>| match secret_ref::resolve(r, &p.dir) {
        Ok(s) => {
            secret_digests.push(crate::crypto::sha256_hex(s.expose().as_bytes()));
            Some(s)
        }
        Err(e) => {
            d.push(p.diag_value(ptr, e));
            None
        }
    };
    let conn: Option<Arc<dyn Connector>> = match c.connector.as_str() {
        "stripe" => {
            let s = c.stripe.as_ref()?;
            let key = secret(&format!("{base}/stripe/api_key"), &s.api_key, d).filter(|k| {
                // Sent as `Authorization: Bearer <key>`: a key no header can carry would fail
                // every call as if the provider were unreachable.
                let sendable = k.expose().bytes().all(|b| b.is_ascii_graphic());
                if !sendable {
                    d.push(p.diag_value(
                        &format!("{base}/stripe/api_key"),
                        format!(
                            "the secret `{}` holds a space, a line break or another character no HTTP header can carry",
                            s.api_key
                        ),
                    ));
                }
                sendable
            });
            let wh = secret(&format!("{base}/stripe/webhook_secret"), &s.webhook_secret, d);
            match (key, wh) {
                (Some(k), Some(w)) => Some(Arc::new(Stripe::new(
                    k,
                    w,
                    s.webhook_tolerance_secs.unwrap_or(300),
                    s.search_consistency_ms.unwrap_or(60_000),
                ))),
                _ => None,
            }
        }
        "antom" => {
            let a = c.antom.as_ref()?;
            let pk = secret(&format!("{base}/antom/private_key"), &a.private_key, d);
            let pubk = secret(&format!("{base}/antom/provider_public_key"), &a.provider_public_key, d);
            match (pk, pubk) {
                (Some(pk), Some(pubk)) => match Antom::new(
                    a.client_id.clone(),
                    pk.expose(),
                    pubk.expose(),
                    a.key_version.unwrap_or(1),
                    a.settlement_currency.clone(),
                ) {
                    Ok(x) => Some(Arc::new(x)),
                    Err(e) => {
                        let ptr = if matches!(
                            e,
                            crate::crypto::KeyError::PublicKey | crate::crypto::KeyError::PrivateForPublic
                        ) {
                            "provider_public_key"
                        } else {
                            "private_key"
                        };
                        d.push(p.diag_value(&format!("{base}/antom/{ptr}"), format!("key does not load: {e}")));
                        None
                    }
                },
                _ => None,
            }
        }
        _ => None,
    };
    let transport = match Transport::new(&c.base_url, connect, attempt) {
        Ok(t) => Some(t),
        Err(e) => {
            d.push(p.diag_value(&format!("{base}/base_url"), format!("unusable base URL: {e}")));
            None
        }
    };
    if d.len() > before {
        return None;
    }
    let notify_url = format!("{public_base}/v1/webhooks/{}", c.id);
    let notify_path = reqwest::Url::parse(&notify_url)
        .map(|u| u.path().to_string())
        .unwrap_or_else(|_| format!("/v1/webhooks/{}", c.id));
    let kind = conn.as_ref()?.kind();
    let spec =
        Spec { id: c.id.clone(), methods: MethodSet::of(methods.iter().copied()), currencies: currencies.clone() };
    Some((
        spec,
        Some(Channel {
            id: c.id.clone(),
            kind,
            methods: MethodSet::of(methods),
            currencies,
            connector: conn?,
            transport: transport?,
            notify_url,
            notify_path,
        }),
    ))
}

fn channel_ref(
    p: &Parsed,
    ptr: &str,
    id: &str,
    index: &HashMap<String, usize>,
    known: &[&str],
    d: &mut Vec<Diagnostic>,
) -> Option<usize> {
    match index.get(id) {
        Some(i) => Some(*i),
        None => {
            // A channel that exists but failed to build already has its own error.
            if !known.contains(&id) {
                let mut dg = p.diag_value(ptr, format!("unknown channel `{id}`"));
                if let Some(s) = suggest(id, known.iter().copied()) {
                    dg = dg.with_help(format!("did you mean `{s}`?"));
                }
                d.push(dg);
            }
            None
        }
    }
}

fn target(
    p: &Parsed,
    base: &str,
    t: &RawTarget,
    index: &HashMap<String, usize>,
    known: &[&str],
    d: &mut Vec<Diagnostic>,
) -> Option<Target> {
    let before = d.len();
    let t = if let Some(chs) = &t.channels {
        Target::Ordered(
            chs.iter()
                .enumerate()
                .filter_map(|(i, c)| channel_ref(p, &format!("{base}/channels/{i}"), c, index, known, d))
                .collect(),
        )
    } else {
        let split = t.split.as_ref()?;
        // Every channel of the split, then its backups, with where each is written: resolved
        // once each, and each named once across both (a repeat is named where it repeats).
        let places: Vec<(String, &String, Option<u32>)> = split
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("{base}/split/{i}/channel"), &s.channel, Some(s.weight)))
            .chain(t.backups.iter().flatten().enumerate().map(|(i, c)| (format!("{base}/backups/{i}"), c, None)))
            .collect();
        let (mut weighted, mut backups) = (Vec::new(), Vec::new());
        let mut seen = std::collections::HashSet::new();
        for (ptr, c, weight) in &places {
            if !seen.insert(*c) {
                d.push(p.diag_value(ptr, format!("channel `{c}` appears twice in this route's `split` and `backups`")));
            }
            match (channel_ref(p, ptr, c, index, known, d), weight) {
                (Some(c), Some(w)) => weighted.push((c, *w)),
                (Some(c), None) => backups.push(c),
                (None, _) => {}
            }
        }
        Target::Split { weighted, backups }
    };
    (d.len() == before).then_some(t)
}

/// Why a rule amount cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum DecimalError {
    /// More non-zero decimal places than the currency's exponent.
    TooPrecise,
    /// Above the largest amount paymux accepts (10^15 minor units).
    TooLarge,
}

/// Parses a major-unit decimal into minor units of `c`.
pub fn decimal_to_minor(s: &str, c: Currency) -> Result<i64, DecimalError> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let e = c.exponent() as usize;
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > e {
        return Err(DecimalError::TooPrecise);
    }
    let mut digits = String::from(int);
    digits.push_str(frac_trimmed);
    digits.extend(std::iter::repeat_n('0', e - frac_trimmed.len()));
    match digits.parse::<i64>() {
        Ok(v) if v <= crate::domain::MAX_AMOUNT_MINOR => Ok(v),
        _ => Err(DecimalError::TooLarge),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_rule(
    p: &Parsed,
    base: &str,
    r: &RawRule,
    channels: &[Spec],
    index: &HashMap<String, usize>,
    known: &[&str],
    d: &mut Vec<Diagnostic>,
) -> Option<Rule> {
    let before = d.len();
    let m = &r.matches;
    let mut methods =
        m.methods.as_ref().map_or(MethodSet::ALL, |ms| MethodSet::of(ms.iter().filter_map(|s| Method::parse(s))));
    if let Some(cats) = &m.categories {
        let cats: Vec<&str> = cats.iter().map(String::as_str).collect();
        let in_cats = MethodSet::of(Method::ALL.into_iter().filter(|x| cats.contains(&x.category().as_str())));
        methods = methods.and(in_cats);
        if methods.is_empty() {
            d.push(p.diag(
                &format!("{base}/match/categories"),
                format!("rule `{}` can never match: none of its methods is in these categories", r.name),
            ));
        }
    }
    let currencies: Option<Vec<Currency>> = m.currencies.as_ref().map(|cs| {
        let mut v: Vec<Currency> = cs
            .iter()
            .enumerate()
            .filter_map(|(j, s)| parse_currency(p, &format!("{base}/match/currencies/{j}"), s, d))
            .collect();
        v.sort();
        v
    });
    let amount = match (&m.amount, &currencies) {
        (None, _) => None,
        (Some(_), None) => {
            d.push(p.diag(
                &format!("{base}/match/amount"),
                "an amount range needs `currencies`: amounts are exact only within a currency",
            ));
            None
        }
        (Some(a), Some(cs)) => {
            let mut ranges = Vec::new();
            // Said once for the rule, not once per currency.
            let mut said = false;
            for c in cs {
                let mut bound = |s: &Option<String>, key: &str| -> Option<i64> {
                    let s = s.as_ref()?;
                    match decimal_to_minor(s, *c) {
                        Ok(v) => Some(v),
                        Err(DecimalError::TooLarge) => {
                            d.push(p.diag_value(
                                &format!("{base}/match/amount/{key}"),
                                format!(
                                    "amount `{s}` {c} is above the largest payment paymux accepts (10^15 minor units)"
                                ),
                            ));
                            None
                        }
                        Err(DecimalError::TooPrecise) => {
                            d.push(p.diag_value(
                                &format!("{base}/match/amount/{key}"),
                                format!(
                                    "amount `{s}` is impossible in {c}, which has {} decimal place(s)",
                                    c.exponent()
                                ),
                            ));
                            None
                        }
                    }
                };
                let (min, max) = (bound(&a.min, "min"), bound(&a.max, "max"));
                let why = match (min, max) {
                    (_, Some(hi)) if hi < 1 => Some("`max` is below the smallest payment (one minor unit)"),
                    (Some(lo), Some(hi)) if lo > hi => Some("`min` is greater than `max`"),
                    _ => None,
                };
                if let (Some(why), false) = (why, said) {
                    said = true;
                    d.push(
                        p.diag(&format!("{base}/match/amount"), format!("rule `{}` can never match: {why}", r.name)),
                    );
                }
                // A bound every payment meets is no bound: `min` of one minor unit or less,
                // `max` at the largest payment or above (so the shadowed-rule check sees the
                // rule as the unbounded one it is).
                let min = min.filter(|&v| v > 1);
                let max = max.filter(|&v| v < crate::domain::MAX_AMOUNT_MINOR);
                ranges.push(AmountRange { currency: *c, min, max });
            }
            // Bounds none of which bounds anything are no amount condition.
            Some(ranges).filter(|rs| rs.iter().any(|r| r.min.is_some() || r.max.is_some()))
        }
    };
    let t = target(p, &format!("{base}/route"), &r.route, index, known, d);
    if let Some(t) = &t {
        // Every channel must be able to serve every method (and currency) the rule names. A
        // rule naming categories only matches the methods of those categories its channels
        // take (like a rule naming none); it can never match if they take none of them.
        if m.methods.is_none() && m.categories.is_some() {
            let served = t.channels().into_iter().any(|ci| !channels[ci].methods.and(methods).is_empty());
            if !served {
                d.push(p.diag(
                    &format!("{base}/match/categories"),
                    format!(
                        "rule `{}` can never match: none of its channels serves a method in these categories",
                        r.name
                    ),
                ));
            }
        }
        if m.methods.is_some() {
            for (k, ci) in t.channels().into_iter().enumerate() {
                let ch = &channels[ci];
                let missing: Vec<&str> =
                    methods.iter().filter(|x| !ch.methods.contains(*x)).map(|x| x.as_str()).collect();
                if !missing.is_empty() {
                    d.push(p.diag_value(
                        &route_ptr(base, &r.route, k),
                        format!("channel `{}` cannot serve {} named by rule `{}`", ch.id, missing.join(", "), r.name),
                    ));
                }
            }
        }
        if let Some(cs) = &currencies {
            for (k, ci) in t.channels().into_iter().enumerate() {
                let ch = &channels[ci];
                if let Some(chc) = &ch.currencies {
                    let missing: Vec<&str> = cs.iter().filter(|c| !chc.contains(c)).map(|c| c.code()).collect();
                    if !missing.is_empty() {
                        d.push(p.diag_value(
                            &route_ptr(base, &r.route, k),
                            format!(
                                "channel `{}` does not accept {} named by rule `{}`",
                                ch.id,
                                missing.join(", "),
                                r.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    for k in m.metadata.iter().flat_map(|md| md.keys()).filter(|k| !crate::domain::is_metadata_key(k)) {
        d.push(p.diag(
            &format!("{base}/match/metadata"),
            format!(
                "rule `{}` can never match: the API refuses metadata key `{k}` (keys are 1-40 characters, without \
                 brackets or control characters, and do not start with `paymux_`)",
                r.name
            ),
        ));
    }
    if d.len() > before {
        return None;
    }
    // What its channels take: a payment none of them takes goes on to the next rule (so a
    // rule naming no methods or currencies matches only those its channels serve), instead of
    // being refused for want of a channel.
    let takes: Vec<(MethodSet, Option<Vec<Currency>>)> =
        t.iter().flat_map(|t| t.channels()).map(|ci| (channels[ci].methods, channels[ci].currencies.clone())).collect();
    let mut countries = m.customer_countries.clone();
    if let Some(c) = countries.as_mut() {
        c.sort();
    }
    Some(Rule {
        name: r.name.clone(),
        methods,
        currencies,
        amount,
        countries,
        metadata: m.metadata.clone().unwrap_or_default().into_iter().collect(),
        rollout_percent: m.rollout_percent,
        target: t?,
        takes,
    })
}

/// Pointer to the k-th channel of a route as written (channels, split, then backups).
fn route_ptr(base: &str, t: &RawTarget, k: usize) -> String {
    if t.channels.is_some() {
        return format!("{base}/route/channels/{k}");
    }
    let n = t.split.as_ref().map_or(0, Vec::len);
    if k < n {
        format!("{base}/route/split/{k}/channel")
    } else {
        format!("{base}/route/backups/{}", k - n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `listen: 0.0.0.0:P` and `admin_listen: 127.0.0.1:P` passed check and failed at start,
    /// blaming "Address already in use" on the admin listener.
    #[test]
    fn listeners_clash_on_one_port_of_one_host_or_a_wildcard() {
        for (a, b) in [
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:8080", "10.0.0.5:8080"),
            ("localhost:8080", "127.0.0.1:8080"),
            ("LocalHost:9090", "localhost:9090"),
        ] {
            assert!(same_socket(a, b) && same_socket(b, a), "{a} {b}");
        }
        for (a, b) in [
            ("127.0.0.1:8080", "127.0.0.1:9090"),
            ("127.0.0.1:8080", "10.0.0.5:8080"),
            ("[::1]:8080", "127.0.0.1:8080"),
            ("api.internal:8080", "admin.internal:8080"),
        ] {
            assert!(!same_socket(a, b) && !same_socket(b, a), "{a} {b}");
        }
    }

    #[test]
    fn decimals_respect_exponent() {
        let hkd = Currency::parse("HKD").unwrap();
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(decimal_to_minor("100.5", hkd), Ok(10050));
        assert_eq!(decimal_to_minor("100", hkd), Ok(10000));
        assert_eq!(decimal_to_minor("100.00", jpy), Ok(100));
        assert_eq!(decimal_to_minor("100.5", jpy), Err(DecimalError::TooPrecise));
        assert_eq!(decimal_to_minor("0.001", hkd), Err(DecimalError::TooPrecise));
        assert_eq!(decimal_to_minor("9999999999999999", Currency::parse("KWD").unwrap()), Err(DecimalError::TooLarge));
    }

    #[test]
    fn integral_floats_read_as_the_integers_the_schema_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for f in ["server.yaml", "channels.yaml", "routing.yaml"] {
            let text = std::fs::read_to_string(root.join("routes").join(f)).unwrap();
            std::fs::write(dir.path().join(f), text.replace("connect_ms: 500,", "connect_ms: 500.0,")).unwrap();
        }
        assert!(std::fs::read_to_string(dir.path().join("channels.yaml")).unwrap().contains("500.0"));
        let r = crate::config::check_dir(dir.path());
        assert!(r.is_ok(), "{:?}", r.err());
        let mut v = serde_json::json!({"a": 2.5, "b": [1.0, 3], "c": {"d": 1e3}});
        integral_numbers_as_integers(&mut v);
        assert_eq!(v, serde_json::json!({"a": 2.5, "b": [1, 3], "c": {"d": 1000}}));
    }

    #[test]
    fn an_inverted_amount_range_is_reported_once_whatever_its_currencies() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for f in ["server.yaml", "channels.yaml", "routing.yaml"] {
            let text = std::fs::read_to_string(root.join("routes").join(f)).unwrap();
            let text = text.replace(
                "      methods: [alipay_hk]\n",
                "      methods: [alipay_hk]\n      currencies: [HKD, USD]\n      amount: {min: \"10\", max: \"1\"}\n",
            );
            std::fs::write(dir.path().join(f), text).unwrap();
        }
        let errs = crate::config::check_dir(dir.path()).expect_err("refused");
        let inverted: Vec<_> = errs.iter().filter(|e| e.message.contains("`min` is greater than `max`")).collect();
        assert_eq!(inverted.len(), 1, "{errs:?}");
    }

    /// A copy of `routes/` in `tmp/routes` (beside a link to the sandbox's keys) with
    /// `server.yaml` and `routing.yaml` edited.
    fn example_in(tmp: &Path, server: impl Fn(String) -> String, routing: impl Fn(String) -> String) -> PathBuf {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tmp.join("routes");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(root.join("sandbox"), tmp.join("sandbox")).unwrap();
        let read = |f: &str| std::fs::read_to_string(root.join("routes").join(f)).unwrap();
        std::fs::write(dir.join("server.yaml"), server(read("server.yaml"))).unwrap();
        std::fs::copy(root.join("routes/channels.yaml"), dir.join("channels.yaml")).unwrap();
        std::fs::write(dir.join("routing.yaml"), routing(read("routing.yaml"))).unwrap();
        dir
    }

    /// The rule `p` routes a 10.00 payment of `method` in `currency` from an HK customer by.
    fn rule_for(p: &Policy, method: &str, currency: &str) -> String {
        let md = std::collections::BTreeMap::new();
        let f = crate::policy::routing::Facts {
            method: Method::parse(method).unwrap(),
            currency: Currency::parse(currency).unwrap(),
            amount_minor: 1000,
            country: Some("HK"),
            metadata: &md,
            customer_id: None,
            order_id: "o",
        };
        p.router.evaluate(&f).unwrap().rule.to_string()
    }

    /// `routes/` with `routing.yaml`'s rules replaced by `rules`, compiled for serving.
    fn example_with_rules(rules: &str) -> Policy {
        let tmp = tempfile::tempdir().unwrap();
        let routing =
            format!("kind: routing\nrules:\n{rules}default:\n  channels: [stripe_primary, stripe_backup, antom_hk]\n");
        let dir = example_in(tmp.path(), |s| s, |_| routing.clone());
        crate::config::load_dir(&dir, &Overrides::default()).expect("valid")
    }

    #[test]
    fn a_tls_certificate_and_key_that_cannot_serve_are_refused_before_start() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let with_tls = |cert: &str, key: &str| {
            let tmp = tempfile::tempdir().unwrap();
            let (cert, key) = (root.join(cert), root.join(key));
            let tls = format!("tls:\n  cert_file: {}\n  key_file: {}\nlimits:", cert.display(), key.display());
            let dir = example_in(tmp.path(), |s| s.replace("limits:", &tls), |s| s);
            crate::config::check_dir(&dir).err().map(|e| e[0].message.clone())
        };
        assert_eq!(with_tls("sandbox/tls/server.pem", "sandbox/tls/server.key"), None);
        let text = with_tls("README.md", "sandbox/tls/server.key").expect("refused");
        assert!(text.contains("must hold a PEM certificate"), "{text}");
        // An RSA key of another party: well-formed, but not the certificate's.
        let other = with_tls("sandbox/tls/server.pem", "sandbox/keys/antom_merchant_private.pem").expect("refused");
        assert!(other.contains("does not serve the certificate"), "{other}");
    }

    #[test]
    fn an_api_key_no_header_can_carry_is_refused_and_a_final_line_break_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = example_in(tmp.path(), |s| s, |s| s);
        let channels = std::fs::read_to_string(dir.join("channels.yaml")).unwrap();
        std::fs::write(
            dir.join("channels.yaml"),
            channels
                .replace("file:../sandbox/keys/stripe_primary_api_key", "file:bad_key")
                .replace("file:../sandbox/keys/stripe_backup_api_key", "file:good_key"),
        )
        .unwrap();
        std::fs::write(dir.join("bad_key"), "sk_test_1\r\nX-Injected: 1\n").unwrap();
        std::fs::write(dir.join("good_key"), "sk_test_2\r\n").unwrap();
        let errs = crate::config::load_dir(&dir, &Overrides::default()).err().expect("refused");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("the secret `file:bad_key` holds"), "{errs:?}");
        assert!(!errs[0].message.contains("sk_test"), "{errs:?}");
    }

    #[test]
    fn a_private_key_given_as_antom_public_key_is_refused_where_it_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = example_in(tmp.path(), |s| s, |s| s);
        let channels = std::fs::read_to_string(dir.join("channels.yaml")).unwrap();
        let swapped = channels.replace("keys/antom_provider_public.pem", "keys/antom_merchant_private.pem");
        std::fs::write(dir.join("channels.yaml"), swapped).unwrap();
        let errs = crate::config::load_dir(&dir, &Overrides::default()).err().expect("refused");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, 35, "{errs:?}");
        assert!(errs[0].message.contains("a private key, where the provider's public key belongs"), "{errs:?}");
    }

    #[test]
    fn a_rule_on_a_metadata_key_the_api_refuses_and_a_listener_clash_by_flags_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let bad_key = |s: String| {
            s.replace("methods: [alipay_hk]\n", "methods: [alipay_hk]\n      metadata: {paymux_src: web}\n")
        };
        let dir = example_in(tmp.path(), |s| s, bad_key);
        let errs = crate::config::check_dir(&dir).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("can never match: the API refuses metadata key `paymux_src`"), "{errs:?}");
        let tmp = tempfile::tempdir().unwrap();
        let dir = example_in(tmp.path(), |s| s, |s| s);
        let ov = Overrides { listen: Some("127.0.0.1:9090".into()), ..Overrides::default() };
        let errs = crate::config::load_dir(&dir, &ov).err().expect("refused");
        assert!(errs[0].message.contains("would both listen on 127.0.0.1:9090"), "{errs:?}");
        // --public-base-url is held to the file's form: providers are told to call back there.
        for url in ["not a url", "localhost:8080", "https://", "https://pay.example.com/a b"] {
            let ov = Overrides { public_base_url: Some(url.into()), ..Overrides::default() };
            let errs = crate::config::load_dir(&dir, &ov).err().expect("refused");
            assert!(errs[0].message.contains("is not an absolute http(s) URL"), "{url}: {errs:?}");
        }
        for url in ["https://pay.example.com/?a=1", "https://pay.example.com/#x"] {
            let ov = Overrides { public_base_url: Some(url.into()), ..Overrides::default() };
            assert!(crate::config::load_dir(&dir, &ov).is_err(), "{url}");
        }
        let ov = Overrides { public_base_url: Some("https://pay.example.com/hooks/".into()), ..Overrides::default() };
        assert!(crate::config::load_dir(&dir, &ov).is_ok());
        // And the file's field alike (its schema lets a query through).
        let tmp = tempfile::tempdir().unwrap();
        let with_query = |s: String| {
            let i = s.find("public_base_url:").unwrap();
            let end = i + s[i..].find('\n').unwrap();
            format!("{}public_base_url: https://pay.example.com/?via=x{}", &s[..i], &s[end..])
        };
        let dir = example_in(tmp.path(), with_query, |s| s);
        let errs = crate::config::load_dir(&dir, &Overrides::default()).err().expect("refused");
        assert!(
            errs[0].message.contains("`public_base_url` is not an absolute http(s) URL without a query"),
            "{errs:?}"
        );
    }

    #[test]
    fn the_same_files_reached_where_the_store_resolves_elsewhere_are_another_version() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("deep/b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let (ra, rb) = (example_in(&a, |s| s, |s| s), example_in(&b, |s| s, |s| s));
        let current = tmp.path().join("current");
        let load = |target: &Path| {
            let _ = std::fs::remove_file(&current);
            std::os::unix::fs::symlink(target, &current).unwrap();
            let p = crate::config::load_dir(&current, &Overrides::default()).expect("valid");
            (p.version.clone(), p.server.data_dir.clone())
        };
        let (va, da) = load(&ra);
        let (vb, db) = load(&rb);
        assert_ne!(da, db);
        assert_ne!(va, vb, "identical files, but the store would move: a reload must see a change");
        assert_eq!(load(&ra), (va, da));
    }

    #[test]
    fn the_data_directory_must_lie_outside_the_config_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let inside = |s: String| s.replace("data_dir: ../data", "data_dir: ./state/../data");
        let dir = example_in(tmp.path(), inside, |s| s);
        let errs = crate::config::load_dir(&dir, &Overrides::default()).err().expect("refused");
        assert_eq!((errs.len(), errs[0].line, errs[0].col), (1, 7, 11), "{errs:?}");
        assert!(errs[0].file.ends_with("server.yaml") && errs[0].message.contains("inside the config directory"));
        let ov = Overrides { data_dir: Some(dir.join("x")), ..Overrides::default() };
        let errs = crate::config::load_dir(&dir, &ov).err().expect("refused");
        assert!(errs[0].message.contains("inside the config directory"), "{errs:?}");
        // A store where the default used to be is not passed over.
        let unset = |s: String| s.replace("data_dir: ../data\n", "");
        let tmp2 = tempfile::tempdir().unwrap();
        let dir2 = example_in(tmp2.path(), unset, |s| s);
        assert!(crate::config::load_dir(&dir2, &Overrides::default()).is_ok());
        std::fs::create_dir(dir2.join("data")).unwrap();
        std::fs::write(dir2.join("data/paymux.db"), "").unwrap();
        let errs = crate::config::load_dir(&dir2, &Overrides::default()).err().expect("refused");
        assert!(errs[0].message.contains("holds paymux's store"), "{errs:?}");
        // `..` in the part not created yet counts too, either way.
        let ov = Overrides { data_dir: Some(tmp.path().join("nowhere/../routes/data")), ..Overrides::default() };
        assert!(crate::config::load_dir(&dir, &ov).is_err());
        let ov = Overrides { data_dir: Some(dir.join("state/../../data")), ..Overrides::default() };
        assert!(crate::config::load_dir(&dir, &ov).is_ok());
        // Outside, through a symlink to the config directory: resolved where it is now.
        std::os::unix::fs::symlink(&dir, tmp.path().join("current")).unwrap();
        let ov = Overrides { data_dir: Some(tmp.path().join("current/../data")), ..Overrides::default() };
        let p = crate::config::load_dir(&tmp.path().join("current"), &ov).expect("valid");
        assert_eq!(p.server.data_dir, tmp.path().canonicalize().unwrap().join("data"));
    }

    /// What `load_dir` refuses routing `rules` with.
    fn refused(rules: &str) -> Vec<Diagnostic> {
        let tmp = tempfile::tempdir().unwrap();
        let routing =
            format!("kind: routing\nrules:\n{rules}default:\n  channels: [stripe_primary, stripe_backup, antom_hk]\n");
        let dir = example_in(tmp.path(), |s| s, |_| routing.clone());
        match crate::config::load_dir(&dir, &Overrides::default()) {
            Ok(_) => panic!("accepted: {rules}"),
            Err(errs) => errs,
        }
    }

    /// The messages `load_dir` refuses routing `rules` with.
    fn refusals(rules: &str) -> Vec<String> {
        refused(rules).into_iter().map(|d| d.message).collect()
    }

    #[test]
    fn identical_rules_are_told_apart_and_a_repeated_split_channel_is_named_where_it_is() {
        let e = refused(
            "  - {name: a, match: {methods: [visa]}, route: {channels: [stripe_backup]}}\n  \
             - {name: b, match: {methods: [visa]}, route: {channels: [stripe_primary]}}\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        // Moving `b` above `a` would only shadow `a`.
        assert_eq!(e[0].help.as_deref(), Some("`a` and `b` match the same payments: remove one, or make them differ"));
        let e = refused(
            "  - name: s\n    match: {methods: [visa]}\n    route:\n      split: [{channel: stripe_primary, weight: 50}, {channel: stripe_backup, weight: 50}]\n      backups: [stripe_backup]\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].message, "channel `stripe_backup` appears twice in this route's `split` and `backups`");
        assert_eq!((e[0].line, e[0].col), (7, 17), "{e:?}");
    }

    #[test]
    fn a_rule_naming_categories_only_matches_the_methods_of_them_its_channels_take() {
        // cross_border holds PayPal and UnionPay too, which no Stripe channel carries.
        let p = example_with_rules(
            "  - {name: cb, match: {categories: [cross_border]}, route: {channels: [stripe_backup]}}\n",
        );
        let rule = |method: &str| rule_for(&p, method, "HKD");
        assert_eq!(
            (rule("visa"), rule("apple_pay"), rule("alipay_hk")),
            ("cb".into(), "default".into(), "default".into())
        );
        let e = refusals("  - {name: corp, match: {categories: [corporate]}, route: {channels: [stripe_backup]}}\n");
        assert_eq!(e, ["rule `corp` can never match: none of its channels serves a method in these categories"]);
        let e = refusals(
            "  - {name: none, match: {currencies: [HKD], amount: {max: \"0\"}}, route: {channels: [stripe_backup]}}\n",
        );
        assert_eq!(e, ["rule `none` can never match: `max` is below the smallest payment (one minor unit)"]);
    }

    #[test]
    fn a_bound_every_payment_meets_is_no_bound_to_the_shadowed_rule_check() {
        for min in ["0", "0.01"] {
            let e = refusals(&format!(
                "  - {{name: a, match: {{methods: [visa], currencies: [HKD], amount: {{min: \"{min}\"}}}}, route: {{channels: [stripe_backup]}}}}\n  \
                 - {{name: b, match: {{methods: [visa], currencies: [HKD]}}, route: {{channels: [stripe_primary]}}}}\n"
            ));
            assert!(e.len() == 1 && e[0].starts_with("rule `b` is shadowed by earlier rule `a`"), "min {min}: {e:?}");
        }
    }

    #[test]
    fn every_channel_a_rule_cannot_use_is_named_at_once() {
        let e = refusals("  - {name: x, match: {methods: [visa], currencies: [EUR]}, route: {channels: [antom_hk, stripe_backup]}}\n");
        assert!(e.iter().any(|m| m.contains("channel `antom_hk` cannot serve visa")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("channel `stripe_backup` does not accept EUR")), "{e:?}");
    }

    #[test]
    fn a_rule_naming_no_methods_or_currencies_matches_what_its_channels_take() {
        let p = example_with_rules(
            "  - {name: hk-wallet, match: {customer_countries: [HK]}, route: {channels: [antom_hk]}}\n  \
             - {name: cards, match: {methods: [visa]}, route: {channels: [stripe_backup]}}\n",
        );
        let rule = |method: &str, currency: &str| rule_for(&p, method, currency);
        assert_eq!(rule("alipay_hk", "HKD"), "hk-wallet");
        // antom_hk takes neither visa nor USD: on to the next rule.
        assert_eq!(rule("visa", "HKD"), "cards");
        assert_eq!(rule("alipay_hk", "USD"), "default");
        // stripe_backup takes HKD, USD and CNY only.
        assert_eq!(rule("visa", "EUR"), "default");
        // Channels of different kinds in one rule: what one of them takes, in its currencies.
        let p = example_with_rules(
            "  - {name: mixed, match: {customer_countries: [HK]}, route: {channels: [antom_hk, stripe_backup]}}\n",
        );
        let mixed = |method: &str, currency: &str| rule_for(&p, method, currency);
        assert_eq!((mixed("alipay_hk", "HKD"), mixed("visa", "USD")), ("mixed".into(), "mixed".into()));
        // Both methods and both currencies are the rule's, but no channel takes AlipayHK in USD.
        assert_eq!(mixed("alipay_hk", "USD"), "default");
        // So a later rule to a channel that does take it is not shadowed: it gets them.
        let tmp = tempfile::tempdir().unwrap();
        let rules = "kind: routing\nrules:\n  - {name: mixed, match: {customer_countries: [HK]}, route: {channels: [antom_hk, stripe_backup]}}\n  \
                     - {name: usd-wallet, match: {customer_countries: [HK]}, route: {channels: [antom_us]}}\n\
                     default:\n  channels: [stripe_primary]\n";
        let dir = example_in(tmp.path(), |s| s, |_| rules.to_string());
        let channels = std::fs::read_to_string(dir.join("channels.yaml")).unwrap();
        let antom = &channels[channels.find("  - id: antom_hk").unwrap()..];
        let us =
            antom.replacen("id: antom_hk", "id: antom_us", 1).replacen("currencies: [HKD]", "currencies: [USD]", 1);
        std::fs::write(dir.join("channels.yaml"), format!("{channels}{us}")).unwrap();
        let p = crate::config::load_dir(&dir, &Overrides::default()).expect("valid: usd-wallet is reachable");
        assert_eq!(rule_for(&p, "alipay_hk", "USD"), "usd-wallet");
    }
}
