//! The one error type of the service. It knows nothing of GraphQL: `graphql::error` is the one place
//! it becomes a GraphQL error with a stable `extensions.code`.
//!
//! `AppError` deliberately does not implement `Display`: async-graphql has a blanket
//! `From<T: Display>` for its error type, and a `?` through it would drop `extensions.code`. Going
//! through the explicit `From<AppError>` in `graphql::error` is the only way out.

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
    /// A sensitive change (new phone, deleting the account) needs a session signed in within the last
    /// `REAUTH_SECONDS`; this one is older: sign in again.
    ReauthenticationRequired,
    /// No such thing for this caller (a session id that is not one of the caller's live sessions:
    /// another user's is answered the same as one that never existed).
    NotFound,
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

pub type AppResult<T> = Result<T, AppError>;
