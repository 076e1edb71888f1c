//! Stripe's `Idempotency-Key` semantics: the first request with a key runs and its response is
//! kept; the same key with the same request replays that response; the same key with another
//! request is refused; a key whose first request is still running is refused with a conflict.

use super::http::Response;
use std::collections::HashMap;
use std::sync::Mutex;

enum Entry {
    InFlight { fingerprint: String },
    Done { fingerprint: String, response: Box<Response> },
}

/// What to do with a request that carries a key.
pub(crate) enum Begin {
    /// First use: run it, then call [`IdempotencyStore::finish`].
    New,
    /// Seen before with the same request: answer this.
    Replay(Response),
    /// Seen before with another request.
    Mismatch,
    /// The first request with this key is still running.
    InFlight,
}

/// Keys and stored responses of one simulator instance (kept for its lifetime).
#[derive(Default)]
pub(crate) struct IdempotencyStore {
    entries: Mutex<HashMap<String, Entry>>,
}

impl IdempotencyStore {
    pub(crate) fn begin(&self, key: &str, fingerprint: &str) -> Begin {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(key) {
            None => {
                m.insert(key.to_string(), Entry::InFlight { fingerprint: fingerprint.to_string() });
                Begin::New
            }
            Some(Entry::InFlight { .. }) => Begin::InFlight,
            Some(Entry::Done { fingerprint: f, .. }) if f != fingerprint => Begin::Mismatch,
            Some(Entry::Done { response, .. }) => Begin::Replay((**response).clone()),
        }
    }

    /// Stores the response of a request begun with [`Begin::New`], or forgets the key when the
    /// request was not applied (`None`), so it can be retried.
    pub(crate) fn finish(&self, key: &str, response: Option<Response>) {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match (m.remove(key), response) {
            (Some(Entry::InFlight { fingerprint }), Some(response)) => {
                m.insert(key.to_string(), Entry::Done { fingerprint, response: Box::new(response) });
            }
            (Some(done @ Entry::Done { .. }), _) => {
                m.insert(key.to_string(), done);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_refuses_and_forgets() {
        let s = IdempotencyStore::default();
        assert!(matches!(s.begin("k", "a"), Begin::New));
        assert!(matches!(s.begin("k", "a"), Begin::InFlight));
        s.finish("k", Some(Response::new(201)));
        assert!(matches!(s.begin("k", "a"), Begin::Replay(r) if r.status == 201));
        assert!(matches!(s.begin("k", "b"), Begin::Mismatch));
        assert!(matches!(s.begin("j", "a"), Begin::New));
        s.finish("j", None);
        assert!(matches!(s.begin("j", "b"), Begin::New), "an unapplied request leaves no trace");
    }
}
