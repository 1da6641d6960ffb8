//! One error type for every handler, and the mapping of axum's own rejections onto it.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshcore_node::{FieldError, NodeError, SettingsError};
use serde::Serialize;

/// The JSON body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code, e.g. `malformed_json`, `invalid_settings`.
    pub error: String,
    /// A sentence for people, naming what is wrong.
    pub message: String,
    /// For `invalid_settings`: every rule broken, by field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// An API error: a status, a code and a message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<FieldError>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After` header of `seconds` (rounded up by the caller).
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = if self.status.is_server_error() {
            // Internal details go to the log, not to the client.
            tracing::error!(code = self.code, message = %self.message, "request failed");
            "internal error; the node's log has the details".to_owned()
        } else {
            self.message
        };
        let body = ErrorBody {
            error: self.code.to_owned(),
            message,
            details: self.details,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let message = rejection.body_text();
        match rejection {
            JsonRejection::JsonSyntaxError(_) => {
                Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
            }
            JsonRejection::JsonDataError(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_body", message)
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                status,
                "payload_too_large",
                format!(
                    "the body is larger than the limit of {} bytes",
                    crate::MAX_BODY_BYTES
                ),
            ),
            _ => Self::new(
                if status.is_client_error() {
                    status
                } else {
                    StatusCode::BAD_REQUEST
                },
                "bad_body",
                message,
            ),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", rejection.body_text())
    }
}

impl From<meshcore_node::records::RecordsError> for ApiError {
    fn from(error: meshcore_node::records::RecordsError) -> Self {
        use meshcore_node::records::RecordsError;
        let (status, code) = match &error {
            RecordsError::Invalid { field, .. } if *field == "ttl" => {
                (StatusCode::BAD_REQUEST, "invalid_ttl")
            }
            RecordsError::Invalid { field, .. } if *field == "value" => {
                (StatusCode::BAD_REQUEST, "invalid_value")
            }
            RecordsError::Invalid { field, .. } if *field == "key" => {
                (StatusCode::BAD_REQUEST, "invalid_key")
            }
            RecordsError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_service"),
            RecordsError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            RecordsError::Dht(_) => (StatusCode::SERVICE_UNAVAILABLE, "dht_unavailable"),
        };
        Self::new(status, code, error.to_string())
    }
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> Self {
        match error {
            NodeError::Settings(SettingsError::Invalid { errors, .. }) => Self {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_settings",
                message: format!(
                    "settings unchanged: {}",
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                details: errors,
                retry_after: None,
            },
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        }
    }
}
