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
        [
            PaymentStatus::RequiresAction,
            PaymentStatus::Processing,
            PaymentStatus::Succeeded,
            PaymentStatus::Failed,
            PaymentStatus::Canceled,
            PaymentStatus::Refunded,
            PaymentStatus::PartiallyRefunded,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
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

/// Generates an opaque id with a type prefix: `pay_` + 24 base62 characters from the OS CSPRNG.
pub fn new_id(prefix: &str) -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let rng = SystemRandom::new();
    let mut s = String::with_capacity(prefix.len() + 25);
    s.push_str(prefix);
    s.push('_');
    let mut produced = 0;
    while produced < 24 {
        let mut bytes = [0u8; 32];
        // SystemRandom only fails when the OS has no entropy source; there is no safe fallback.
        if rng.fill(&mut bytes).is_err() {
            panic!("operating system random number generator unavailable");
        }
        // Rejection sampling: 248 = 62 * 4, so bytes below it map to base62 without bias.
        for b in bytes.into_iter().filter(|b| *b < 248) {
            if produced == 24 {
                break;
            }
            s.push(ALPHABET[(b % 62) as usize] as char);
            produced += 1;
        }
    }
    s
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
    }

    #[test]
    fn status_round_trip() {
        for s in ["requires_action", "processing", "succeeded", "refunded"] {
            assert_eq!(PaymentStatus::parse(s).unwrap().as_str(), s);
        }
    }
}
