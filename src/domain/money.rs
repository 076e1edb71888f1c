//! Money: integer minor units plus a currency. Never a float.

use super::currency::Currency;
use std::fmt;

/// The largest amount paymux accepts, in minor units (10^15).
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

/// A positive amount of money in minor units of `currency`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be greater than 0")]
    NotPositive,
    #[error("amount must be at most {MAX_AMOUNT_MINOR} minor units")]
    TooLarge,
}

impl Money {
    /// A positive amount no larger than [`MAX_AMOUNT_MINOR`].
    pub fn new(minor: i64, currency: Currency) -> Result<Self, AmountError> {
        if minor <= 0 {
            return Err(AmountError::NotPositive);
        }
        if minor > MAX_AMOUNT_MINOR {
            return Err(AmountError::TooLarge);
        }
        Ok(Money { minor, currency })
    }

    /// Minor units (cents for HKD).
    pub fn minor(&self) -> i64 {
        self.minor
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// Decimal string in major units, as PayPal-style providers want it.
    pub fn major_string(&self) -> String {
        self.currency.format_major(self.minor)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.major_string(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        let hkd = Currency::parse("HKD").unwrap();
        assert_eq!(Money::new(0, hkd), Err(AmountError::NotPositive));
        assert_eq!(Money::new(-1, hkd), Err(AmountError::NotPositive));
        assert_eq!(Money::new(MAX_AMOUNT_MINOR + 1, hkd), Err(AmountError::TooLarge));
        assert_eq!(Money::new(1999, hkd).unwrap().to_string(), "19.99 HKD");
    }
}
