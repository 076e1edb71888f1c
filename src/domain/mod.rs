//! Domain vocabulary: money, currencies, methods, statuses, secrets. Pure; no I/O.

pub mod currency;
pub mod method;
pub mod money;
pub mod payment;
pub mod secret;

pub use currency::Currency;
pub use method::{Category, Method};
pub use money::{Money, MAX_AMOUNT_MINOR};
pub use payment::{is_channel_id, is_http_url, is_id, is_metadata_key, new_id, PaymentStatus};
pub use secret::Secret;
