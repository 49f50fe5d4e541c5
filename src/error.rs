//! The one error type of the service and the one place it becomes a GraphQL error.
//!
//! `AppError` deliberately does not implement `Display`: async-graphql has a blanket
//! `From<T: Display>` for its error type, and a `?` through it would drop `extensions.code`. Going
//! through the explicit `From<AppError>` below is the only way out, so every error a client sees has a
//! stable code. Internal causes (SQL, Redis, I/O) are logged here, once, with their cause chain; the
//! client gets a generic message.

use async_graphql::ErrorExtensions;

/// Stable values of `extensions.code`. Documented in README.md and in the schema description.
pub mod codes {
    pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
    pub const INVALID_CODE: &str = "INVALID_CODE";
    pub const TOO_MANY_ATTEMPTS: &str = "TOO_MANY_ATTEMPTS";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const INVALID_CREDENTIALS: &str = "INVALID_CREDENTIALS";
    pub const ACCOUNT_LOCKED: &str = "ACCOUNT_LOCKED";
    pub const INVALID_TOKEN: &str = "INVALID_TOKEN";
    pub const PHONE_ALREADY_REGISTERED: &str = "PHONE_ALREADY_REGISTERED";
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    pub const FORBIDDEN: &str = "FORBIDDEN";
    pub const SERVICE_UNAVAILABLE: &str = "SERVICE_UNAVAILABLE";
    pub const INTERNAL_SERVER_ERROR: &str = "INTERNAL_SERVER_ERROR";
}

#[derive(Debug)]
pub enum AppError {
    /// An argument failed validation. `field` names the argument; `reason` is a stable
    /// machine-readable word (password policy: TOO_SHORT, TOO_LONG, TOO_COMMON).
    BadInput {
        field: &'static str,
        reason: &'static str,
        message: String,
    },
    /// Wrong, expired, used or no code pending: deliberately one answer for all four.
    InvalidCode,
    /// The code was burnt by too many wrong tries.
    TooManyAttempts,
    RateLimited {
        retry_after_seconds: u64,
    },
    /// Unknown phone or wrong password: one answer for both.
    InvalidCredentials,
    AccountLocked {
        retry_after_seconds: u64,
    },
    InvalidToken,
    PhoneAlreadyRegistered,
    Unauthenticated,
    /// The caller may not see this (another user's phone).
    Forbidden,
    /// A dependency is down; the client may retry.
    Unavailable(anyhow::Error),
    /// A bounded queue is full (password hashing): refused at once, retry after the given time. Not
    /// logged per request (the queue logs a summary), so a flood cannot flood the log too.
    Overloaded {
        retry_after_seconds: u64,
    },
    Internal(anyhow::Error),
}

impl AppError {
    pub fn bad_input(field: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        AppError::BadInput {
            field,
            reason,
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        use codes::*;
        match self {
            AppError::BadInput { .. } => BAD_USER_INPUT,
            AppError::InvalidCode => INVALID_CODE,
            AppError::TooManyAttempts => TOO_MANY_ATTEMPTS,
            AppError::RateLimited { .. } => RATE_LIMITED,
            AppError::InvalidCredentials => INVALID_CREDENTIALS,
            AppError::AccountLocked { .. } => ACCOUNT_LOCKED,
            AppError::InvalidToken => INVALID_TOKEN,
            AppError::PhoneAlreadyRegistered => PHONE_ALREADY_REGISTERED,
            AppError::Unauthenticated => UNAUTHENTICATED,
            AppError::Forbidden => FORBIDDEN,
            AppError::Unavailable(_) | AppError::Overloaded { .. } => SERVICE_UNAVAILABLE,
            AppError::Internal(_) => INTERNAL_SERVER_ERROR,
        }
    }

    fn client_message(&self) -> String {
        match self {
            AppError::BadInput { message, .. } => message.clone(),
            AppError::InvalidCode => "The code is wrong, has expired, or was already used.".into(),
            AppError::TooManyAttempts => {
                "Too many wrong codes: this code can no longer be used. Request a new one.".into()
            }
            AppError::RateLimited { retry_after_seconds } => {
                format!("Too many requests. Try again in {retry_after_seconds} seconds.")
            }
            AppError::InvalidCredentials => "The phone number or password is wrong.".into(),
            AppError::AccountLocked { retry_after_seconds } => format!(
                "Password sign-in is locked after too many wrong passwords. Try again in \
                 {retry_after_seconds} seconds, or sign in with a code."
            ),
            AppError::InvalidToken => "The token is invalid, expired or already used.".into(),
            AppError::PhoneAlreadyRegistered => "This phone number is already registered.".into(),
            AppError::Unauthenticated => "Sign in first: a valid access token is required.".into(),
            AppError::Forbidden => "Only the user may see this.".into(),
            AppError::Unavailable(_) => "The service is temporarily unavailable. Try again.".into(),
            AppError::Overloaded { retry_after_seconds } => {
                format!("The service is busy. Try again in {retry_after_seconds} seconds.")
            }
            AppError::Internal(_) => "Internal server error.".into(),
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // Pool exhaustion and connection loss are retryable, not bugs.
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                AppError::Unavailable(anyhow::Error::new(e).context("postgres"))
            }
            other => AppError::Internal(anyhow::Error::new(other).context("postgres")),
        }
    }
}

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        AppError::Unavailable(anyhow::Error::new(e).context("redis"))
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(e: AppError) -> Self {
        match &e {
            AppError::Internal(cause) => tracing::error!(error = ?cause, "internal error"),
            AppError::Unavailable(cause) => {
                tracing::warn!(error = ?cause, "dependency unavailable")
            }
            _ => {}
        }
        let code = e.code();
        async_graphql::Error::new(e.client_message()).extend_with(|_, ext| {
            ext.set("code", code);
            match &e {
                AppError::BadInput { field, reason, .. } => {
                    ext.set("field", *field);
                    ext.set("reason", *reason);
                }
                AppError::RateLimited { retry_after_seconds }
                | AppError::AccountLocked { retry_after_seconds }
                | AppError::Overloaded { retry_after_seconds } => {
                    ext.set("retryAfterSeconds", *retry_after_seconds);
                }
                _ => {}
            }
        })
    }
}

pub type AppResult<T> = Result<T, AppError>;
