//! Payment lifecycle vocabulary shared by the engine, the store and the API.

use serde::{Deserialize, Serialize};

/// Normalised payment status as the app sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    RequiresAction,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    Refunded,
    PartiallyRefunded,
}

impl PaymentStatus {
    /// Every status.
    pub const ALL: [PaymentStatus; 7] = [
        PaymentStatus::RequiresAction,
        PaymentStatus::Processing,
        PaymentStatus::Succeeded,
        PaymentStatus::Failed,
        PaymentStatus::Canceled,
        PaymentStatus::Refunded,
        PaymentStatus::PartiallyRefunded,
    ];

    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            PaymentStatus::RequiresAction => "requires_action",
            PaymentStatus::Processing => "processing",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Canceled => "canceled",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::PartiallyRefunded => "partially_refunded",
        }
    }

    /// Parses a wire name (used by the store).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// No further provider state change is expected without a merchant action.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            PaymentStatus::Succeeded
                | PaymentStatus::Failed
                | PaymentStatus::Canceled
                | PaymentStatus::Refunded
                | PaymentStatus::PartiallyRefunded
        )
    }

    /// Money has moved from the payer (refunds may follow).
    pub fn is_captured(&self) -> bool {
        matches!(self, PaymentStatus::Succeeded | PaymentStatus::Refunded | PaymentStatus::PartiallyRefunded)
    }
}

/// Whether an app may use `k` as a metadata key: 1-40 characters, no brackets (the form
/// encoding PSPs take nests on them), no control characters, and not `paymux_`'s own.
pub fn is_metadata_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars().count() <= 40
        && !k.starts_with("paymux_")
        && !k.contains(['[', ']'])
        && !k.chars().any(char::is_control)
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// An absolute http(s) URL as RFC 3986 writes one: a browser's parser would take a space or
/// a non-ASCII letter and encode it, but the providers' checks refuse such a URL.
pub fn is_http_url(s: &str) -> bool {
    let uri_chars = s.bytes().all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b));
    uri_chars && reqwest::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// Whether `s` has the form of a channel id (the channels schema's pattern
/// `^[a-z0-9][a-z0-9_-]{0,63}$`).
pub fn is_channel_id(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=64).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// Whether `s` has the shape of an id [`new_id`] makes with `prefix` (nothing longer or
/// stranger is ever one of ours, so it is not worth a lookup, a log line or an audit field).
pub fn is_id(prefix: &str, s: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|r| r.len() == 24 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Generates an opaque, time-ordered id with a type prefix: `pay_` + 8 base62 characters of
/// the creation time in Unix milliseconds + 16 base62 characters (95 bits) from the OS CSPRNG.
/// Ids sort by creation, so new rows land at the end of the store's b-trees (one hot page
/// instead of a random one per insert); the random part keeps them unguessable.
pub fn new_id(prefix: &str) -> String {
    let ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    let mut s = String::with_capacity(prefix.len() + 25);
    s.push_str(prefix);
    s.push('_');
    // 62^8 ms reaches past the year 8000; the width is fixed, so text order is time order.
    let mut t = [0u8; 8];
    let mut v = ms;
    for c in t.iter_mut().rev() {
        *c = BASE62[(v % 62) as usize];
        v /= 62;
    }
    s.extend(t.iter().map(|c| *c as char));
    random_base62(&mut s, 16);
    s
}

/// Appends `n` uniformly random base62 characters, drawing from a per-thread buffer that is
/// refilled from the OS CSPRNG (one system call per few ids instead of one per id).
fn random_base62(out: &mut String, n: usize) {
    use ring::rand::{SecureRandom, SystemRandom};
    use std::cell::RefCell;
    thread_local! {
        static POOL: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    }
    POOL.with(|p| {
        let (buf, pos) = &mut *p.borrow_mut();
        let mut produced = 0;
        while produced < n {
            if *pos >= buf.len() {
                buf.resize(256, 0);
                // SystemRandom only fails when the OS has no entropy source; there is no
                // safe fallback.
                if SystemRandom::new().fill(buf).is_err() {
                    panic!("operating system random number generator unavailable");
                }
                *pos = 0;
            }
            let b = buf[*pos];
            // Bytes are used once, then overwritten with the next refill.
            buf[*pos] = 0;
            *pos += 1;
            // Rejection sampling: 248 = 62 * 4, so bytes below it map to base62 without bias.
            if b < 248 {
                out.push(BASE62[(b % 62) as usize] as char);
                produced += 1;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id("pay");
        let b = new_id("pay");
        assert!(a.starts_with("pay_") && a.len() == 28);
        assert_ne!(a, b);
        assert!(a[4..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(is_id("pay", &a));
        assert!(!is_id("re", &a) && !is_id("pay", &a[..27]) && !is_id("pay", &format!("{a}0")));
        assert!(!is_id("pay", &a.replace('_', "-")) && !is_id("pay", &format!("pay_{}", "Z/".repeat(12))));
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let a = new_id("pay");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("pay");
        assert!(a[..12] < b[..12], "{a} !< {b}");
        // The random part varies within one millisecond too.
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_id("x")[10..].to_string()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn status_round_trip() {
        for s in ["requires_action", "processing", "succeeded", "refunded"] {
            assert_eq!(PaymentStatus::parse(s).unwrap().as_str(), s);
        }
    }
}
