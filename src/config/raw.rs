//! Raw config structs: the YAML file format, one-to-one. Never used at runtime; `compile`
//! turns them into the immutable policy. `deny_unknown_fields` everywhere backs the schemas.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub kind: String,
    pub listen: String,
    pub admin_listen: String,
    pub public_base_url: String,
    pub data_dir: Option<String>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub idempotency: RawIdempotency,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub reconciler: RawReconciler,
    pub api_keys: Vec<RawApiKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body_bytes: Option<u32>,
    pub request_deadline_ms: Option<u32>,
    pub header_timeout_ms: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdempotency {
    pub retention_hours: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub synchronous: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReconciler {
    pub interval_ms: Option<u32>,
    pub initial_backoff_ms: Option<u32>,
    pub max_backoff_ms: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub id: String,
    pub sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannels {
    pub kind: String,
    pub channels: Vec<RawChannel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    pub id: String,
    pub connector: String,
    pub base_url: String,
    pub methods: Vec<String>,
    pub currencies: Option<Vec<String>>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    pub stripe: Option<RawStripe>,
    pub antom: Option<RawAntom>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect_ms: Option<u32>,
    pub attempt_ms: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStripe {
    pub api_key: String,
    pub webhook_secret: String,
    pub webhook_tolerance_secs: Option<u32>,
    pub search_consistency_ms: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAntom {
    pub client_id: String,
    pub private_key: String,
    pub provider_public_key: String,
    pub key_version: Option<u32>,
    pub settlement_currency: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    pub kind: String,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    pub default: Option<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: RawMatch,
    pub route: RawTarget,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub methods: Option<Vec<String>>,
    pub categories: Option<Vec<String>>,
    pub currencies: Option<Vec<String>>,
    pub amount: Option<RawAmount>,
    pub customer_countries: Option<Vec<String>>,
    pub metadata: Option<BTreeMap<String, String>>,
    pub rollout_percent: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAmount {
    pub min: Option<String>,
    pub max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub channels: Option<Vec<String>>,
    pub split: Option<Vec<RawSplit>>,
    pub backups: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    pub channel: String,
    pub weight: u32,
}
