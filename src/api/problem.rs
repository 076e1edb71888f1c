//! RFC 9457 problem details: every API error, in one place, with a stable snake_case code.

use serde::Serialize;

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    /// How to fix it, where that is obvious (config diagnostics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into(), help: None }
    }
}

/// An error response. `type` and `title` derive from the stable `code`.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub request_id: Option<String>,
    /// For 405: the method the resource accepts (sent as the `Allow` header).
    pub allow: Option<&'static str>,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", &format!("https://paymux.dev/problems/{}", self.code))?;
        m.serialize_entry("title", title(self.code))?;
        m.serialize_entry("status", &self.status)?;
        m.serialize_entry("detail", &self.detail)?;
        m.serialize_entry("code", self.code)?;
        if !self.errors.is_empty() {
            m.serialize_entry("errors", &self.errors)?;
        }
        if let Some(r) = &self.request_id {
            m.serialize_entry("request_id", r)?;
        }
        m.end()
    }
}

impl Problem {
    /// A problem with a code, status and detail; the title comes from the code.
    pub fn new(status: u16, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, code, detail: detail.into(), errors: vec![], request_id: None, allow: None }
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
        "malformed_http" => "Request is not valid HTTP",
        "request_header_too_large" => "Request header fields too large",
        "malformed_json" => "Request body is not valid JSON",
        "validation_failed" => "Request failed validation",
        "body_too_large" => "Request body too large",
        "unsupported_media_type" => "Unsupported media type",
        "unsupported_content_encoding" => "Unsupported content encoding",
        "unsupported_transfer_encoding" => "Unsupported transfer encoding",
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
        "payment_outcome_unknown" => "The provider has not confirmed the payment yet",
        "request_body_timeout" => "Request body timed out",
        "request_body_unreadable" => "Request body could not be read",
        "provider_refused" => "The provider refused the request",
        "provider_unavailable" => "The provider could not be reached",
        "store_unavailable" => "Storage unavailable",
        "webhook_signature_invalid" => "Webhook signature invalid",
        "unknown_channel" => "Unknown channel",
        "webhook_deferred" => "Callback arrived early; retry",
        "webhook_malformed" => "Callback payload not understood",
        "not_found" => "Not found",
        "config_rejected" => "Config rejected",
        "method_not_allowed" => "Method not allowed",
        _ => "Error",
    }
}
