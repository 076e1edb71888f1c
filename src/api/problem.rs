//! RFC 9457 problem details: every API error, in one place, with a stable snake_case code.

use serde::Serialize;

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// An error response.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Problem {
    /// A problem with a code, status and detail; the title comes from the code.
    pub fn new(status: u16, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            type_: format!("https://paymux.dev/problems/{code}"),
            title: title(code),
            status,
            detail: detail.into(),
            code,
            errors: vec![],
            request_id: None,
        }
    }

    /// 422 `validation_failed` with field errors.
    pub fn validation(errors: Vec<FieldError>) -> Problem {
        let n = errors.len();
        let mut p = Problem::new(422, "validation_failed", format!("{n} field(s) are invalid"));
        p.errors = errors;
        p
    }
}

fn title(code: &str) -> &'static str {
    match code {
        "unauthorized" => "Missing or invalid API key",
        "malformed_json" => "Request body is not valid JSON",
        "validation_failed" => "Request failed validation",
        "body_too_large" => "Request body too large",
        "unsupported_media_type" => "Unsupported media type",
        "idempotency_key_missing" => "Idempotency-Key header required",
        "idempotency_key_invalid" => "Invalid Idempotency-Key header",
        "idempotency_key_reused" => "Idempotency-Key reused with a different request",
        "idempotency_key_in_use" => "A request with this Idempotency-Key is in progress",
        "no_route" => "No channel can take this payment",
        "payment_not_found" => "Payment not found",
        "refund_not_found" => "Refund not found",
        "payment_not_cancelable" => "Payment cannot be canceled",
        "payment_not_refundable" => "Payment cannot be refunded",
        "refund_amount_exceeds" => "Refund exceeds the refundable amount",
        "provider_refused" => "The provider refused the request",
        "provider_unavailable" => "The provider could not be reached",
        "store_unavailable" => "Storage unavailable",
        "webhook_signature_invalid" => "Webhook signature invalid",
        "unknown_channel" => "Unknown channel",
        "not_found" => "Not found",
        "config_rejected" => "Config rejected",
        "method_not_allowed" => "Method not allowed",
        _ => "Error",
    }
}
