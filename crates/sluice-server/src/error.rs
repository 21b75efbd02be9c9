//! `ApiError`: every error the HTTP surface answers with, and its one mapping to a status code and
//! a JSON body `{"success":false,"error":CODE,"message":…,"errors":[{path,message}]}`.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use sluice_core::log::LogError;
use sluice_core::parse::Problem;
use sluice_core::warehouse::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    Invalid(Vec<Problem>),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// A bug or a misconfiguration behind the API (not retryable); details are logged.
    #[error("{0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    success: bool,
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "<[Problem]>::is_empty")]
    errors: &'a [Problem],
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "invalid_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    pub fn invalid(path: &str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid(vec![Problem::new(path, message)])
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> ApiError {
        match e {
            LogError::Overloaded {
                backlog,
                retry_after,
            } => ApiError::Unavailable {
                message: format!(
                    "ingestion is backlogged ({backlog} events not yet processed); retry later"
                ),
                retry_after,
            },
            LogError::Unavailable(m) => ApiError::Unavailable {
                message: format!("event log unavailable: {m}"),
                retry_after: Duration::from_secs(1),
            },
            LogError::Other(m) => ApiError::Unavailable {
                message: format!("event log error: {m}"),
                retry_after: Duration::from_secs(5),
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable {
                message: format!("warehouse unavailable: {m}"),
                retry_after: Duration::from_secs(1),
            },
            StoreError::Invalid(m) => ApiError::invalid("", m),
            StoreError::NotFound(m) => ApiError::Invalid(vec![Problem::new("", m)]),
            StoreError::Other(m) => {
                tracing::error!(error = %m, "warehouse error");
                ApiError::Internal("warehouse error".into())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Invalid(problems) if problems.len() == 1 => {
                let p = &problems[0];
                if p.path.is_empty() {
                    p.message.clone()
                } else {
                    format!("{}: {}", p.path, p.message)
                }
            }
            ApiError::Invalid(problems) => format!("{} problems in the request", problems.len()),
            other => other.to_string(),
        };
        let problems: &[Problem] = match &self {
            ApiError::Invalid(p) => p,
            _ => &[],
        };
        let body = ErrorBody {
            success: false,
            error: self.code(),
            message,
            errors: problems,
        };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::Unavailable { retry_after, .. } = &self {
            let secs = retry_after.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if let ApiError::Unauthorized(_) = &self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sluice\""),
            );
        }
        response
    }
}
