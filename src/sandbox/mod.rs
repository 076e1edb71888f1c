//! Local provider simulators with fault injection: a Stripe account and an Antom (AlipayHK)
//! merchant account that the official SDKs accept with only their base URL changed, plus a
//! control API to inject faults, inspect payments and act as the payer.
//!
//! Layout: `service.rs` starts and stops everything (also as a pingora background service);
//! `http.rs` is the listener/connection layer; `faults.rs` the fault model and gate;
//! `control.rs` the control API; `stripe/` and `antom/` the simulators; `callbacks.rs`
//! webhook/notify delivery; `form.rs` Stripe form bodies; `pages.rs` the payer pages;
//! `tls.rs` the HTTPS listener material (`sandbox/tls/`).
//!
//! Architecture invariant: nothing outside this module depends on it except the binary
//! (`paymux sandbox`, `serve --with-sandbox`) and tests; it only borrows the connectors' pure
//! signing helpers, so the simulators check the same wire rules the connectors produce.

mod antom;
mod callbacks;
mod control;
mod faults;
mod form;
mod http;
mod idempotency;
mod pages;
mod service;
mod sim;
mod stripe;
mod tls;

pub use faults::{CallbackFaults, FaultError, Faults, OPS};
pub use service::{run_standalone, Sandbox, SandboxService};
pub use tls::CA_PEM;

use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

const STRIPE_PRIMARY_API_KEY: &str = include_str!("../../sandbox/keys/stripe_primary_api_key");
const STRIPE_PRIMARY_WEBHOOK_SECRET: &str = include_str!("../../sandbox/keys/stripe_primary_webhook_secret");
const STRIPE_BACKUP_API_KEY: &str = include_str!("../../sandbox/keys/stripe_backup_api_key");
const STRIPE_BACKUP_WEBHOOK_SECRET: &str = include_str!("../../sandbox/keys/stripe_backup_webhook_secret");
/// The demo merchant's Antom public key (the simulator verifies requests with it).
pub const ANTOM_MERCHANT_PUBLIC_KEY: &str = include_str!("../../sandbox/keys/antom_merchant_public.pem");
/// The simulated Antom's private key (it signs responses and notifies with it).
pub const ANTOM_PROVIDER_PRIVATE_KEY: &str = include_str!("../../sandbox/keys/antom_provider_private.pem");
/// The demo Antom client id.
pub const ANTOM_DEMO_CLIENT_ID: &str = "SANDBOX_PAYMUX_DEMO";

/// Everything the sandbox runs.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The control API's address.
    pub control_listen: SocketAddr,
    pub stripe: Vec<StripeInstance>,
    pub antom: Vec<AntomInstance>,
    /// Faults at start, by instance name.
    pub faults: HashMap<String, Faults>,
}

/// A simulated Stripe account.
#[derive(Clone)]
pub struct StripeInstance {
    pub name: String,
    pub listen: SocketAddr,
    /// The secret key clients must send as `Authorization: Bearer`.
    pub api_key: String,
    /// Signs webhooks (`whsec_…`).
    pub webhook_secret: String,
    /// Where webhooks go; none are sent without it.
    pub webhook_url: Option<String>,
}

/// A simulated Antom merchant account.
#[derive(Clone)]
pub struct AntomInstance {
    pub name: String,
    pub listen: SocketAddr,
    /// An optional HTTPS listener for the same simulator (the Python SDK always connects with
    /// TLS to port 443); its certificate covers 127.0.0.1–127.0.0.9 and localhost.
    pub tls_listen: Option<SocketAddr>,
    pub client_id: String,
    /// PEM or bare base64 (SPKI or PKCS#1): verifies the merchant's request signatures.
    pub merchant_public_key: String,
    /// PEM or bare base64 (PKCS#8 or PKCS#1): signs responses and notifies.
    pub provider_private_key: String,
}

impl std::fmt::Debug for StripeInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeInstance")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("api_key", &"***")
            .field("webhook_secret", &"***")
            .field("webhook_url", &self.webhook_url)
            .finish()
    }
}

impl std::fmt::Debug for AntomInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AntomInstance")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("tls_listen", &self.tls_listen)
            .field("client_id", &self.client_id)
            .field("provider_private_key", &"***")
            .finish_non_exhaustive()
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl SandboxConfig {
    /// The names of the simulator instances it runs.
    pub fn instance_names(&self) -> Vec<String> {
        self.stripe.iter().map(|s| s.name.clone()).chain(self.antom.iter().map(|a| a.name.clone())).collect()
    }

    /// Why `faults` cannot be given to these instances: one names an instance it does not run.
    pub fn unknown_fault_instance(&self, faults: &HashMap<String, Faults>) -> Option<String> {
        let names = self.instance_names();
        let unknown = faults.keys().find(|n| !names.contains(n))?;
        Some(format!("no simulator instance `{unknown}` (instances: {})", names.join(", ")))
    }

    /// The demo set with its control API on `control` and the simulators on the ports after
    /// it, in order (`paymux sandbox --listen`, `paymux serve --with-sandbox`); with port 0,
    /// every listener on a port the OS picks.
    pub fn at(control: SocketAddr, callback_base: &str) -> SandboxConfig {
        let mut cfg = SandboxConfig::demo(callback_base);
        cfg.control_listen = control;
        let mut port = control.port();
        let mut next = || {
            // 0 lets the OS pick (the startup banner shows the bound ports): asked for, or
            // past the last port.
            port = if port == 0 { 0 } else { port.checked_add(1).unwrap_or(0) };
            SocketAddr::new(control.ip(), port)
        };
        for s in cfg.stripe.iter_mut() {
            s.listen = next();
        }
        for a in cfg.antom.iter_mut() {
            a.listen = next();
        }
        cfg
    }

    /// The demo set the example config in `routes/` expects: control on 127.0.0.1:9100,
    /// `stripe_primary` on :9101, `stripe_backup` on :9102 (webhooks to
    /// `{callback_base}/v1/webhooks/{name}`), `antom_hk` on :9103 (client id
    /// `SANDBOX_PAYMUX_DEMO`, no TLS listener). Keys come from `sandbox/keys/`, embedded.
    pub fn demo(callback_base: &str) -> SandboxConfig {
        let base = callback_base.trim_end_matches('/');
        let stripe = |name: &str, port, key: &str, secret: &str| StripeInstance {
            name: name.to_string(),
            listen: loopback(port),
            api_key: key.trim().to_string(),
            webhook_secret: secret.trim().to_string(),
            webhook_url: Some(format!("{base}/v1/webhooks/{name}")),
        };
        SandboxConfig {
            control_listen: loopback(9100),
            stripe: vec![
                stripe("stripe_primary", 9101, STRIPE_PRIMARY_API_KEY, STRIPE_PRIMARY_WEBHOOK_SECRET),
                stripe("stripe_backup", 9102, STRIPE_BACKUP_API_KEY, STRIPE_BACKUP_WEBHOOK_SECRET),
            ],
            antom: vec![AntomInstance {
                name: "antom_hk".into(),
                listen: loopback(9103),
                tls_listen: None,
                client_id: ANTOM_DEMO_CLIENT_ID.into(),
                merchant_public_key: ANTOM_MERCHANT_PUBLIC_KEY.into(),
                provider_private_key: ANTOM_PROVIDER_PRIVATE_KEY.into(),
            }],
            faults: HashMap::new(),
        }
    }
}

/// Reads start-up faults: a YAML or JSON map of instance name → [`Faults`] (`.json` files are
/// read as JSON, anything else as YAML). Unknown fields and out-of-range values are errors.
pub fn load_faults(path: &Path) -> anyhow::Result<HashMap<String, Faults>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(HashMap::new());
    }
    let trees: HashMap<String, serde_json::Value> = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{}: invalid faults", path.display()))?
    } else {
        serde_yaml::from_str(&text).with_context(|| format!("{}: invalid faults", path.display()))?
    };
    let mut map = HashMap::new();
    for (name, v) in trees {
        let f = Faults::from_value(v).with_context(|| format!("{}: instance `{name}`", path.display()))?;
        map.insert(name, f);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_matches_the_example_routes() {
        let d = SandboxConfig::demo("http://127.0.0.1:8080/");
        assert_eq!(d.stripe[0].listen, loopback(9101));
        assert_eq!(d.stripe[1].listen, loopback(9102));
        assert_eq!(d.antom[0].listen, loopback(9103));
        assert_eq!(d.stripe[0].api_key, "sk_test_paymux_sandbox_primary");
        assert_eq!(d.stripe[0].webhook_url.as_deref(), Some("http://127.0.0.1:8080/v1/webhooks/stripe_primary"));
        assert!(!format!("{d:?}").contains("sk_test"), "secrets are masked in Debug");
        let routes = include_str!("../../routes/channels.yaml");
        for i in &d.stripe {
            assert!(routes.contains(&format!("base_url: http://{}", i.listen)), "{}", i.name);
        }
        assert!(routes.contains(&format!("client_id: {}", d.antom[0].client_id)));
    }

    #[test]
    fn loads_faults_from_yaml_and_json() {
        let dir = std::env::temp_dir().join(format!("paymux-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let y = dir.join("f.yaml");
        std::fs::write(&y, "stripe_primary:\n  latency_ms: 50\n  callbacks: {drop: true}\n").unwrap();
        let m = load_faults(&y).unwrap();
        assert_eq!(m["stripe_primary"].latency_ms, 50);
        assert!(m["stripe_primary"].callbacks.drop);
        let j = dir.join("f.json");
        std::fs::write(&j, r#"{"antom_hk": {"error_rate_pct": 100, "error_status": 503}}"#).unwrap();
        assert_eq!(load_faults(&j).unwrap()["antom_hk"].error_status, 503);
        std::fs::write(&j, r#"{"antom_hk": {"error_rate": 100}}"#).unwrap();
        assert!(format!("{:#}", load_faults(&j).unwrap_err()).contains("unknown field `error_rate`"));
        std::fs::write(&y, "antom_hk:\n  ops: [charge]\n").unwrap();
        assert!(format!("{:#}", load_faults(&y).unwrap_err()).contains("unknown op `charge`"));
        // Fields by name only (serde alone would take a list of values by position).
        std::fs::write(&y, "antom_hk: [0, 0, 503]\n").unwrap();
        assert!(format!("{:#}", load_faults(&y).unwrap_err()).contains("expected an object"));
        std::fs::write(&y, "").unwrap();
        assert!(load_faults(&y).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
