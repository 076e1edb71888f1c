//! Stripe's test payment methods and tokens (`pm_card_visa`, `tok_mastercard`,
//! `pm_card_visa_chargeDeclinedInsufficientFunds`, …) and what confirming each one does.
//! Any other `pm_` id (e.g. a wallet payment method from Stripe.js) is an ordinary Visa card
//! that succeeds, except a `pm_card_` name Stripe does not know (a typo of a test card), which
//! Stripe refuses as no such PaymentMethod.

/// How a card declines: the `card_error` fields Stripe returns.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decline {
    pub code: &'static str,
    pub decline_code: &'static str,
    pub message: &'static str,
    pub advice_code: Option<&'static str>,
    pub param: Option<&'static str>,
}

/// What confirming a payment with the card does.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Behaviour {
    Succeed,
    /// 3-D Secure is required on every payment.
    Authenticate,
    Decline(Decline),
    /// 3-D Secure is required, and the payment is declined once the payer has authenticated.
    AuthenticateThenDecline(Decline),
    /// Payments succeed; a refund is accepted (`succeeded`), then fails (Stripe's
    /// `pm_card_refundFail`, 4000 0000 0000 5126).
    RefundsFail,
}

/// A test card.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Card {
    pub brand: &'static str,
    pub last4: &'static str,
    pub funding: &'static str,
    pub country: &'static str,
    pub behaviour: Behaviour,
}

const fn ok(brand: &'static str, last4: &'static str, funding: &'static str, country: &'static str) -> Card {
    Card { brand, last4, funding, country, behaviour: Behaviour::Succeed }
}

const fn three_ds(last4: &'static str) -> Card {
    Card { brand: "visa", last4, funding: "credit", country: "US", behaviour: Behaviour::Authenticate }
}

const fn declined(
    last4: &'static str,
    code: &'static str,
    decline_code: &'static str,
    message: &'static str,
    advice_code: Option<&'static str>,
    param: Option<&'static str>,
) -> Card {
    Card {
        brand: "visa",
        last4,
        funding: "credit",
        country: "US",
        behaviour: Behaviour::Decline(Decline { code, decline_code, message, advice_code, param }),
    }
}

/// The card a wallet or unknown `pm_` id stands for.
pub(crate) static DEFAULT_CARD: Card = ok("visa", "4242", "credit", "US");

const GENERIC: &str = "Your card was declined.";

/// How a payment that needs 3-D Secure fails when the payer is not there to authenticate.
pub(crate) static AUTHENTICATION_REQUIRED: Decline = Decline {
    code: "authentication_required",
    decline_code: "authentication_required",
    message: "Your card was declined. This transaction requires authentication.",
    advice_code: None,
    param: None,
};

/// (ids, card). Ids follow Stripe's testing docs.
static CARDS: &[(&[&str], Card)] = &[
    (&["pm_card_visa", "tok_visa"], ok("visa", "4242", "credit", "US")),
    (&["pm_card_visa_debit", "tok_visa_debit"], ok("visa", "5556", "debit", "US")),
    (&["pm_card_mastercard", "tok_mastercard"], ok("mastercard", "4444", "credit", "US")),
    (&["pm_card_mastercard_debit", "tok_mastercard_debit"], ok("mastercard", "8210", "debit", "US")),
    (&["pm_card_mastercard_prepaid", "tok_mastercard_prepaid"], ok("mastercard", "5100", "prepaid", "US")),
    (&["pm_card_amex", "tok_amex"], ok("amex", "8431", "credit", "US")),
    (&["pm_card_discover", "tok_discover"], ok("discover", "1117", "credit", "US")),
    (&["pm_card_diners", "tok_diners"], ok("diners", "0004", "credit", "US")),
    (&["pm_card_jcb", "tok_jcb"], ok("jcb", "0505", "credit", "JP")),
    (&["pm_card_unionpay", "tok_unionpay"], ok("unionpay", "0005", "credit", "CN")),
    (&["pm_card_hk", "tok_hk"], ok("visa", "0004", "credit", "HK")),
    (
        &["pm_card_refundFail", "tok_refundFail"],
        Card { brand: "visa", last4: "5126", funding: "credit", country: "US", behaviour: Behaviour::RefundsFail },
    ),
    (
        &["pm_card_authenticationRequired", "tok_authenticationRequired", "pm_card_authenticationRequiredOnSetup"],
        three_ds("3184"),
    ),
    (&["pm_card_threeDSecure2Required", "tok_threeDSecure2Required"], three_ds("3220")),
    (&["pm_card_threeDSecureRequired", "tok_threeDSecureRequired"], three_ds("3063")),
    (
        &[
            "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds",
            "tok_authenticationRequiredChargeDeclinedInsufficientFunds",
        ],
        Card {
            brand: "visa",
            last4: "3178",
            funding: "credit",
            country: "US",
            behaviour: Behaviour::AuthenticateThenDecline(Decline {
                code: "card_declined",
                decline_code: "insufficient_funds",
                message: "Your card has insufficient funds.",
                advice_code: Some("try_again_later"),
                param: None,
            }),
        },
    ),
    (&["pm_card_riskLevelElevated", "tok_riskLevelElevated"], ok("visa", "9235", "credit", "US")),
    // Blocked by Radar's default rule for the highest risk level.
    (
        &["pm_card_riskLevelHighest", "tok_riskLevelHighest"],
        declined("4954", "card_declined", "fraudulent", GENERIC, Some("do_not_try_again"), None),
    ),
    (
        &["pm_card_visa_chargeDeclinedVelocityLimitExceeded", "tok_visa_chargeDeclinedVelocityLimitExceeded"],
        declined("6975", "card_declined", "card_velocity_exceeded", GENERIC, Some("try_again_later"), None),
    ),
    // Attaches to a customer; every charge is declined.
    (
        &["pm_card_chargeCustomerFail", "tok_chargeCustomerFail"],
        declined("0341", "card_declined", "generic_decline", GENERIC, Some("try_again_later"), None),
    ),
    (
        &["pm_card_chargeDeclined", "pm_card_visa_chargeDeclined", "tok_chargeDeclined", "tok_visa_chargeDeclined"],
        declined("0002", "card_declined", "generic_decline", GENERIC, Some("try_again_later"), None),
    ),
    (
        &[
            "pm_card_visa_chargeDeclinedInsufficientFunds",
            "pm_card_chargeDeclinedInsufficientFunds",
            "tok_chargeDeclinedInsufficientFunds",
            "tok_visa_chargeDeclinedInsufficientFunds",
        ],
        declined(
            "9995",
            "card_declined",
            "insufficient_funds",
            "Your card has insufficient funds.",
            Some("try_again_later"),
            None,
        ),
    ),
    (
        &[
            "pm_card_visa_chargeDeclinedLostCard",
            "pm_card_chargeDeclinedLostCard",
            "tok_chargeDeclinedLostCard",
            "tok_visa_chargeDeclinedLostCard",
        ],
        declined("9987", "card_declined", "lost_card", GENERIC, Some("do_not_try_again"), None),
    ),
    (
        &[
            "pm_card_visa_chargeDeclinedStolenCard",
            "pm_card_chargeDeclinedStolenCard",
            "tok_chargeDeclinedStolenCard",
            "tok_visa_chargeDeclinedStolenCard",
        ],
        declined("9979", "card_declined", "stolen_card", GENERIC, Some("do_not_try_again"), None),
    ),
    (
        &[
            "pm_card_chargeDeclinedFraudulent",
            "pm_card_visa_chargeDeclinedFraudulent",
            "tok_chargeDeclinedFraudulent",
            "tok_visa_chargeDeclinedFraudulent",
            "pm_card_radarBlock",
            "tok_radarBlock",
        ],
        declined("0019", "card_declined", "fraudulent", GENERIC, Some("do_not_try_again"), None),
    ),
    (
        &[
            "pm_card_chargeDeclinedExpiredCard",
            "pm_card_visa_chargeDeclinedExpiredCard",
            "tok_chargeDeclinedExpiredCard",
        ],
        declined("0069", "expired_card", "expired_card", "Your card has expired.", None, Some("exp_month")),
    ),
    (
        &[
            "pm_card_chargeDeclinedIncorrectCvc",
            "pm_card_visa_chargeDeclinedIncorrectCvc",
            "tok_chargeDeclinedIncorrectCvc",
        ],
        declined(
            "0127",
            "incorrect_cvc",
            "incorrect_cvc",
            "Your card's security code is incorrect.",
            None,
            Some("cvc"),
        ),
    ),
    (
        &[
            "pm_card_chargeDeclinedProcessingError",
            "pm_card_visa_chargeDeclinedProcessingError",
            "tok_chargeDeclinedProcessingError",
        ],
        declined(
            "0119",
            "processing_error",
            "processing_error",
            "An error occurred while processing your card. Try again in a little bit.",
            Some("try_again_later"),
            None,
        ),
    ),
];

/// Looks up a test payment method or token id.
pub(crate) fn lookup(id: &str) -> Option<&'static Card> {
    CARDS.iter().find(|(ids, _)| ids.contains(&id)).map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ids_resolve() {
        assert_eq!(lookup("pm_card_visa").unwrap().behaviour, Behaviour::Succeed);
        assert_eq!(lookup("tok_mastercard").unwrap().brand, "mastercard");
        assert_eq!(lookup("pm_card_unionpay").unwrap().brand, "unionpay");
        assert_eq!(lookup("pm_card_threeDSecure2Required").unwrap().behaviour, Behaviour::Authenticate);
        match &lookup("pm_card_visa_chargeDeclinedInsufficientFunds").unwrap().behaviour {
            Behaviour::Decline(d) => assert_eq!((d.code, d.decline_code), ("card_declined", "insufficient_funds")),
            b => panic!("{b:?}"),
        }
        match &lookup("pm_card_chargeDeclinedExpiredCard").unwrap().behaviour {
            Behaviour::Decline(d) => assert_eq!(d.code, "expired_card"),
            b => panic!("{b:?}"),
        }
        assert!(lookup("pm_1Abc").is_none());
    }

    #[test]
    fn ids_are_unique() {
        let mut all: Vec<&str> = CARDS.iter().flat_map(|(ids, _)| ids.iter().copied()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
