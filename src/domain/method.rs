//! The fourteen payment methods paymux reaches and the merchant-facing categories.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A payment method as the app names it in `POST /v1/payments`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Octopus,
    Fps,
    AlipayHk,
    WechatPayHk,
    Paypal,
    Visa,
    Mastercard,
    Unionpay,
    ApplePay,
    GooglePay,
    SamsungPay,
    TtWire,
    LetterOfCredit,
    HkBankTransfer,
}

/// Where a method usually comes from; routing rules may match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Local,
    CrossBorder,
    Mobile,
    Corporate,
}

impl Method {
    /// Every method, in a fixed order (the order of [`Method::index`]).
    pub const ALL: [Method; 14] = [
        Method::Octopus,
        Method::Fps,
        Method::AlipayHk,
        Method::WechatPayHk,
        Method::Paypal,
        Method::Visa,
        Method::Mastercard,
        Method::Unionpay,
        Method::ApplePay,
        Method::GooglePay,
        Method::SamsungPay,
        Method::TtWire,
        Method::LetterOfCredit,
        Method::HkBankTransfer,
    ];

    /// The wire name (`"alipay_hk"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Octopus => "octopus",
            Method::Fps => "fps",
            Method::AlipayHk => "alipay_hk",
            Method::WechatPayHk => "wechat_pay_hk",
            Method::Paypal => "paypal",
            Method::Visa => "visa",
            Method::Mastercard => "mastercard",
            Method::Unionpay => "unionpay",
            Method::ApplePay => "apple_pay",
            Method::GooglePay => "google_pay",
            Method::SamsungPay => "samsung_pay",
            Method::TtWire => "tt_wire",
            Method::LetterOfCredit => "letter_of_credit",
            Method::HkBankTransfer => "hk_bank_transfer",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.iter().copied().find(|m| m.as_str() == s)
    }

    /// Dense index in `0..14`, used by the routing index.
    pub fn index(&self) -> usize {
        Method::ALL.iter().position(|m| m == self).unwrap_or(0)
    }

    /// The category a method belongs to.
    pub fn category(&self) -> Category {
        match self {
            Method::Octopus | Method::Fps | Method::AlipayHk | Method::WechatPayHk => Category::Local,
            Method::Paypal | Method::Visa | Method::Mastercard | Method::Unionpay => Category::CrossBorder,
            Method::ApplePay | Method::GooglePay | Method::SamsungPay => Category::Mobile,
            Method::TtWire | Method::LetterOfCredit | Method::HkBankTransfer => Category::Corporate,
        }
    }

    /// All wire names, comma-separated, for error messages.
    pub fn names() -> String {
        Method::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Category {
    /// The wire name (`"cross_border"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Category::Local => "local",
            Category::CrossBorder => "cross_border",
            Category::Mobile => "mobile",
            Category::Corporate => "corporate",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.as_str()), Some(m));
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
            assert_eq!(Method::ALL[m.index()], m);
        }
        assert_eq!(Method::parse("cash"), None);
    }
}
