//! The sandbox control API (JSON, on its own listener): health, live faults per instance,
//! the payments and counters each simulator holds, and payer actions (Antom approve/decline,
//! Stripe 3-D Secure completion).
//!
//! ```text
//! GET    /_sandbox/health
//! GET    /_sandbox/faults
//! GET    /_sandbox/faults/{instance}
//! PUT    /_sandbox/faults/{instance}          body: Faults (replaces the instance's faults)
//! DELETE /_sandbox/faults/{instance}
//! GET    /_sandbox/{instance}/payments
//! GET    /_sandbox/{instance}/stats
//! POST   /_sandbox/{instance}/payments/{paymentId}/approve|decline        (Antom)
//! POST   /_sandbox/{instance}/payment_intents/{id}/authenticate|fail      (Stripe)
//! ```

use super::faults::Faults;
use super::http::{Handler, Reply, Request, Response};
use super::sim::{ActionError, Instance};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The control API handler.
pub(crate) struct Control {
    instances: BTreeMap<String, Arc<Instance>>,
}

fn error(status: u16, message: impl Into<String>) -> Response {
    Response::json(status, &json!({"error": message.into()}))
}

impl Control {
    pub(crate) fn new(instances: BTreeMap<String, Arc<Instance>>) -> Self {
        Control { instances }
    }

    fn instance(&self, name: &str) -> Result<&Arc<Instance>, Response> {
        self.instances.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.instances.keys().map(String::as_str).collect();
            error(404, format!("unknown sandbox instance `{name}` (known: {})", known.join(", ")))
        })
    }

    fn all_faults(&self) -> Value {
        Value::Object(
            self.instances
                .iter()
                .map(|(n, i)| {
                    let f = i.faults();
                    let mut v = serde_json::to_value(&f).unwrap_or_default();
                    // A bounded fault also says how much of it is spent.
                    if let (Some(times), Some(o)) = (f.times, v.as_object_mut()) {
                        o.insert("times_used".into(), f.used().min(times).into());
                    }
                    (n.clone(), v)
                })
                .collect(),
        )
    }

    async fn route(&self, req: Request) -> Result<Response, Response> {
        let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        let method = req.method.as_str();
        match (method, segs.as_slice()) {
            ("GET", ["_sandbox", "health"]) => {
                let names: Vec<&String> = self.instances.keys().collect();
                Ok(Response::json(200, &json!({"status": "ok", "instances": names})))
            }
            ("GET", ["_sandbox", "faults"]) => Ok(Response::json(200, &self.all_faults())),
            ("GET", ["_sandbox", "faults", name]) => {
                self.instance(name)?;
                Ok(Response::json(200, &self.all_faults()[*name]))
            }
            ("PUT", ["_sandbox", "faults", name]) => {
                let inst = self.instance(name)?;
                let faults = Faults::from_json(&req.body).map_err(|e| error(400, format!("invalid faults: {e}")))?;
                tracing::info!(instance = %name, ?faults, "sandbox faults set");
                inst.set_faults(faults.clone()).await;
                Ok(Response::json(200, &serde_json::to_value(faults).unwrap_or_default()))
            }
            ("DELETE", ["_sandbox", "faults", name]) => {
                let inst = self.instance(name)?;
                tracing::info!(instance = %name, "sandbox faults cleared");
                inst.set_faults(Faults::default()).await;
                Ok(Response::json(200, &serde_json::to_value(Faults::default()).unwrap_or_default()))
            }
            ("GET", ["_sandbox", name, "payments"]) => {
                Ok(Response::json(200, &Value::Array(self.instance(name)?.sim.payments())))
            }
            ("GET", ["_sandbox", name, "stats"]) => {
                Ok(Response::json(200, &self.instance(name)?.sim.stats().snapshot()))
            }
            ("POST", ["_sandbox", name, collection, id, action]) => {
                let inst = self.instance(name)?;
                match inst.sim.payer_action(collection, id, action, &req.body) {
                    Ok(v) => Ok(Response::json(200, &v)),
                    Err(ActionError::NotFound(m)) => Err(error(404, m)),
                    Err(ActionError::Conflict(m)) => Err(error(409, m)),
                }
            }
            _ => Err(error(404, format!("no control route {method} {}", req.path))),
        }
    }
}

#[async_trait::async_trait]
impl Handler for Control {
    async fn handle(&self, req: Request) -> Reply {
        Reply::Respond(self.route(req).await.unwrap_or_else(|e| e))
    }
}
