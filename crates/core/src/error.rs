//! The one error enum. Every layer returns it; each dialect maps it to its own wire shape.

use serde_json::Value;

/// One part of a validation error's location, as FastAPI/pydantic report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loc {
    Key(String),
    Index(usize),
}

impl From<&str> for Loc {
    fn from(s: &str) -> Self {
        Loc::Key(s.to_string())
    }
}

/// A request-schema violation: where, what, and the pydantic-style error type.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub loc: Vec<Loc>,
    pub msg: String,
    pub kind: &'static str,
    pub input: Option<Value>,
}

impl FieldError {
    pub fn new(loc: &[&str], kind: &'static str, msg: impl Into<String>) -> Self {
        FieldError {
            loc: loc.iter().map(|s| Loc::from(*s)).collect(),
            msg: msg.into(),
            kind,
            input: None,
        }
    }

    pub fn with_input(mut self, input: Value) -> Self {
        self.input = Some(input);
        self
    }

    /// Prefixes the location, e.g. `["name"]` becomes `["body", "name"]`.
    pub fn under(mut self, prefix: &str) -> Self {
        self.loc.insert(0, Loc::from(prefix));
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid or missing API key")]
    Unauthorized,
    #[error("{message}")]
    Forbidden { message: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// Request-schema violations (422 in Blue Lobster).
    #[error("request validation failed")]
    Invalid(Vec<FieldError>),
    /// A well-formed request that the business rules refuse (400).
    #[error("{message}")]
    BadRequest {
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    /// The resource is busy or the fleet has no room (409).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    /// Well-formed but semantically impossible input that the spec answers with 422 in the
    /// business-error shape (e.g. `invalid_time_range`).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// The request body exceeds the size limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// The caller's key has used its requests for now (429, with `Retry-After`).
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u64 },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The database did not answer in time (503, like `Unavailable`). `sent`: a statement
    /// had gone out, so a write's outcome is unknown; false when no connection could be had
    /// within the wait (nothing was sent). Either way, another statement now would most
    /// likely wait as long again: callers with more to write give up on the rest at once.
    #[error("service unavailable: {message}")]
    Unanswered { message: String, sent: bool },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::Forbidden {
            message: message.into(),
        }
    }

    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            id: id.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Error::BadRequest {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request_with(
        code: &'static str,
        message: impl Into<String>,
        details: Value,
    ) -> Self {
        Error::BadRequest {
            code,
            message: message.into(),
            details: Some(details),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn operation_in_progress() -> Self {
        Error::conflict(
            "operation_in_progress",
            "Another operation is in progress on this Instance",
        )
    }

    /// Whether the database did not answer in time (`Unanswered`).
    pub fn is_unanswered(&self) -> bool {
        matches!(self, Error::Unanswered { .. })
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
