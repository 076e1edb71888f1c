//! Sends connector requests over a pooled HTTP/1.1 client and classifies transport failures.
//!
//! The classification is what failover safety rests on: `NotSent` means no request byte can
//! have reached the provider (connect refused, connect timeout, DNS), so trying another channel
//! is safe; `Timeout` and `Broken` happen after the request may have been delivered and force a
//! status query. Host names are resolved by [`DnsCache`], filled when the policy compiles and
//! refreshed in the background, so no lookup ever runs on the request path.

use super::{WireRequest, WireResponse};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// Why a send produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Nothing reached the provider.
    NotSent(String),
    /// The request may have been delivered; no (complete) answer in time.
    Timeout,
    /// The connection broke after the request may have been delivered.
    Broken(String),
}

impl SendError {
    /// Stable code for attempts, metrics and audit.
    pub fn code(&self) -> &'static str {
        match self {
            SendError::NotSent(_) => "connect_failed",
            SendError::Timeout => "timeout",
            SendError::Broken(_) => "connection_broken",
        }
    }
}

/// Host → addresses, read by the HTTP client instead of the system resolver.
#[derive(Default)]
pub struct DnsCache {
    map: RwLock<HashMap<String, Vec<SocketAddr>>>,
}

impl DnsCache {
    /// The process-wide cache.
    pub fn global() -> Arc<DnsCache> {
        static C: OnceLock<Arc<DnsCache>> = OnceLock::new();
        C.get_or_init(|| Arc::new(DnsCache::default())).clone()
    }

    /// Resolves `host` now (blocking; call off the request path) and stores the result.
    pub fn prime(&self, host: &str) -> Result<(), String> {
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            return Ok(());
        }
        let addrs: Vec<SocketAddr> = (host, 0).to_socket_addrs().map_err(|e| e.to_string())?.collect();
        if addrs.is_empty() {
            return Err("no addresses".into());
        }
        if let Ok(mut m) = self.map.write() {
            m.insert(host.to_string(), addrs);
        }
        Ok(())
    }

    /// Re-resolves every known host; failures keep the previous addresses.
    pub fn refresh_all(&self) {
        let hosts: Vec<String> = self.map.read().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        for h in hosts {
            if let Err(e) = self.prime(&h) {
                tracing::warn!(host = %h, error = %e, "DNS refresh failed; keeping previous addresses");
            }
        }
    }

    fn lookup(&self, host: &str) -> Option<Vec<SocketAddr>> {
        self.map.read().ok()?.get(host).cloned()
    }
}

struct CacheResolver(Arc<DnsCache>);

impl reqwest::dns::Resolve for CacheResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let found = self.0.lookup(name.as_str());
        let host = name.as_str().to_string();
        Box::pin(async move {
            match found {
                Some(a) => Ok(Box::new(a.into_iter()) as reqwest::dns::Addrs),
                None => Err(format!("host {host} not in the DNS cache").into()),
            }
        })
    }
}

/// One channel's HTTP client: base URL, pool, timeouts.
#[derive(Clone)]
pub struct Transport {
    client: reqwest::Client,
    base: String,
    attempt_timeout: Duration,
}

impl Transport {
    /// Builds a client; primes the DNS cache for the base URL's host (blocking).
    pub fn new(base_url: &str, connect_timeout: Duration, attempt_timeout: Duration) -> Result<Self, String> {
        let url = reqwest::Url::parse(base_url).map_err(|e| e.to_string())?;
        let host = url.host_str().ok_or("base URL has no host")?.to_string();
        let cache = DnsCache::global();
        cache.prime(&host).map_err(|e| format!("cannot resolve `{host}`: {e}"))?;
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .http1_only()
            .dns_resolver(Arc::new(CacheResolver(cache)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Transport { client, base: base_url.trim_end_matches('/').to_string(), attempt_timeout })
    }

    /// The per-attempt timeout.
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// Sends `req`, bounded by the attempt timeout (or `deadline`, if sooner).
    pub async fn send(&self, req: &WireRequest, deadline: Option<Duration>) -> Result<WireResponse, SendError> {
        let timeout = deadline.map_or(self.attempt_timeout, |d| d.min(self.attempt_timeout));
        let mut b = self
            .client
            .request(req.method.clone(), format!("{}{}", self.base, req.path))
            .timeout(timeout)
            .body(req.body.clone());
        for (k, v) in &req.headers {
            b = b.header(*k, v);
        }
        let resp = b.send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(classify)?;
        Ok(WireResponse { status, headers, body })
    }
}

fn classify(e: reqwest::Error) -> SendError {
    if e.is_connect() {
        // Connect refused, connect timeout, TLS handshake failure, DNS: nothing was sent.
        SendError::NotSent(root_cause(&e))
    } else if e.is_timeout() {
        SendError::Timeout
    } else {
        SendError::Broken(root_cause(&e))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}
