//! The compiled, immutable policy: what the hot path reads with one atomic load.
//!
//! A `Policy` is built only by `config::load_dir` (parse → schema → typed → semantic checks →
//! compile) and never mutated; reload builds a new one and swaps it in whole. A request keeps
//! the `Arc<Policy>` it started with for every attempt, so a reload mid-request changes nothing
//! for that request.

pub mod routing;

pub use routing::{ChannelIdx, Decision, Facts, MethodSet, Router, Rule, Target};

use crate::connector::transport::Transport;
use crate::connector::Connector;
use crate::domain::{Currency, Method};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A provider endpoint with its connector, ready to call.
pub struct Channel {
    pub id: String,
    pub kind: &'static str,
    pub methods: MethodSet,
    /// `None`: any currency.
    pub currencies: Option<Vec<Currency>>,
    pub connector: Arc<dyn Connector>,
    pub transport: Transport,
    /// Callback URL handed to the provider.
    pub notify_url: String,
    /// Path of `notify_url` (what Antom signs).
    pub notify_path: String,
}

impl Channel {
    /// Whether this channel can take a payment of `method` in `currency`.
    pub fn serves(&self, method: Method, currency: Currency) -> bool {
        self.methods.contains(method) && self.currencies.as_ref().is_none_or(|c| c.contains(&currency))
    }
}

/// An API key entry: id and SHA-256 of the key.
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub id: String,
    pub sha256: [u8; 32],
}

/// Server settings from the `server` file (listen addresses need a restart to change).
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub listen: String,
    pub admin_listen: String,
    pub public_base_url: String,
    pub data_dir: PathBuf,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_body_bytes: usize,
    pub request_deadline: Duration,
    /// How long an HTTP/1 client may take to send a request's header section.
    pub header_timeout: Duration,
    pub idempotency_retention: Duration,
    pub synchronous_full: bool,
    pub reconcile_interval: Duration,
    pub reconcile_initial_backoff: Duration,
    pub reconcile_max_backoff: Duration,
}

/// A source file of the policy and its hash.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: String,
    pub sha256: String,
}

/// The whole compiled policy.
pub struct Policy {
    /// SHA-256 over every source file (path and content), first 16 hex characters.
    pub version: String,
    pub loaded_at: time::OffsetDateTime,
    pub sources: Vec<SourceFile>,
    pub server: ServerSettings,
    pub channels: Vec<Arc<Channel>>,
    pub channel_index: HashMap<String, ChannelIdx>,
    pub router: Router,
    pub api_keys: Vec<ApiKey>,
    /// Channels an earlier policy of this process had and this one dropped. Never routed to;
    /// they keep serving the payments they hold (status, cancel, refund) and verifying their
    /// callbacks, e.g. for a create that was already sending to one when the reload came.
    pub retired: Vec<Arc<Channel>>,
    /// Settings the config changes but only a restart applies (`listen`, …): this policy
    /// keeps the running values and names the changed ones here.
    pub restart_required: Vec<&'static str>,
}

impl Policy {
    /// Channel by id (configured channels only: what routing may use).
    pub fn channel(&self, id: &str) -> Option<&Arc<Channel>> {
        self.channel_index.get(id).map(|i| &self.channels[*i])
    }

    /// The channel serving payments already on `id`: a configured one, else a retired one.
    pub fn holding_channel(&self, id: &str) -> Option<&Arc<Channel>> {
        self.channel(id).or_else(|| self.retired.iter().find(|c| c.id == id))
    }

    /// Carries over, as retired, the channels `old` had (configured or retired) that this
    /// policy does not configure.
    pub fn retire_from(&mut self, old: &Policy) {
        let gone = old.channels.iter().chain(&old.retired).filter(|c| self.channel(&c.id).is_none());
        self.retired = gone.cloned().collect();
    }

    /// The key id whose hash matches `key`, compared in constant time against every entry.
    pub fn authenticate(&self, key: &str) -> Option<&str> {
        let h = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut found = None;
        for k in &self.api_keys {
            if crate::crypto::ct_eq(h.as_ref(), &k.sha256) && found.is_none() {
                found = Some(k.id.as_str());
            }
        }
        found
    }
}
