//! Where an `AppError` becomes a GraphQL error, and the one module of `extensions.code` values, for
//! resolver errors and for request-level refusals (the HTTP layer answers those in the same shape).
//!
//! Internal causes (SQL, Redis, I/O) are logged here, once, with their cause chain; the client gets a
//! generic message and the code.

use async_graphql::{ErrorExtensions, ServerError, Value};

use crate::error::AppError;
use crate::graphql::guard::Refusal;

/// Stable values of `extensions.code`. Documented in README.md and in the schema description.
pub mod codes {
    // Resolver errors (one per `AppError` kind).
    pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
    pub const INVALID_CODE: &str = "INVALID_CODE";
    pub const TOO_MANY_ATTEMPTS: &str = "TOO_MANY_ATTEMPTS";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const INVALID_CREDENTIALS: &str = "INVALID_CREDENTIALS";
    pub const ACCOUNT_LOCKED: &str = "ACCOUNT_LOCKED";
    pub const INVALID_TOKEN: &str = "INVALID_TOKEN";
    pub const PHONE_ALREADY_REGISTERED: &str = "PHONE_ALREADY_REGISTERED";
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    pub const REAUTHENTICATION_REQUIRED: &str = "REAUTHENTICATION_REQUIRED";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const SERVICE_UNAVAILABLE: &str = "SERVICE_UNAVAILABLE";
    pub const INTERNAL_SERVER_ERROR: &str = "INTERNAL_SERVER_ERROR";
    // Request-level refusals: nothing was executed.
    pub const GRAPHQL_PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
    pub const GRAPHQL_VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
    pub const PERSISTED_QUERY_NOT_SUPPORTED: &str = "PERSISTED_QUERY_NOT_SUPPORTED";
    pub const QUERY_LIMIT_EXCEEDED: &str = "QUERY_LIMIT_EXCEEDED";
    pub const BATCH_NOT_SUPPORTED: &str = "BATCH_NOT_SUPPORTED";
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "UNSUPPORTED_MEDIA_TYPE";
    pub const NOT_ACCEPTABLE: &str = "NOT_ACCEPTABLE";
    pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
    pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
    /// Cookie mode: a mutation carrying the refresh cookie without an allowed Origin (CSRF).
    pub const FORBIDDEN: &str = "FORBIDDEN";

    /// Every code above (a test checks none is missing).
    pub const ALL: &[&str] = &[
        BAD_USER_INPUT,
        INVALID_CODE,
        TOO_MANY_ATTEMPTS,
        RATE_LIMITED,
        INVALID_CREDENTIALS,
        ACCOUNT_LOCKED,
        INVALID_TOKEN,
        PHONE_ALREADY_REGISTERED,
        UNAUTHENTICATED,
        REAUTHENTICATION_REQUIRED,
        NOT_FOUND,
        SERVICE_UNAVAILABLE,
        INTERNAL_SERVER_ERROR,
        GRAPHQL_PARSE_FAILED,
        GRAPHQL_VALIDATION_FAILED,
        PERSISTED_QUERY_NOT_SUPPORTED,
        QUERY_LIMIT_EXCEEDED,
        BATCH_NOT_SUPPORTED,
        BAD_REQUEST,
        UNSUPPORTED_MEDIA_TYPE,
        NOT_ACCEPTABLE,
        METHOD_NOT_ALLOWED,
        PAYLOAD_TOO_LARGE,
        FORBIDDEN,
    ];

    /// The constant for a code seen in a response (a bounded metric label without an allocation);
    /// `OTHER` for anything else.
    pub fn intern(code: &str) -> &'static str {
        ALL.iter().find(|c| **c == code).copied().unwrap_or(OTHER)
    }

    /// A label for a code that is not ours (there should be none: `tag_uncoded` codes every error).
    pub const OTHER: &str = "OTHER";
}

pub fn code(e: &AppError) -> &'static str {
    use codes::*;
    match e {
        AppError::BadInput { .. } => BAD_USER_INPUT,
        AppError::InvalidCode => INVALID_CODE,
        AppError::TooManyAttempts => TOO_MANY_ATTEMPTS,
        AppError::RateLimited { .. } => RATE_LIMITED,
        AppError::InvalidCredentials => INVALID_CREDENTIALS,
        AppError::AccountLocked { .. } => ACCOUNT_LOCKED,
        AppError::InvalidToken => INVALID_TOKEN,
        AppError::PhoneAlreadyRegistered => PHONE_ALREADY_REGISTERED,
        AppError::Unauthenticated => UNAUTHENTICATED,
        AppError::LimitExceeded { .. } => QUERY_LIMIT_EXCEEDED,
        AppError::ReauthenticationRequired => REAUTHENTICATION_REQUIRED,
        AppError::NotFound => NOT_FOUND,
        AppError::Unavailable(_) | AppError::Overloaded { .. } => SERVICE_UNAVAILABLE,
        AppError::Internal(_) => INTERNAL_SERVER_ERROR,
    }
}

fn client_message(e: &AppError) -> String {
    match e {
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
        AppError::LimitExceeded { limit, max } => {
            format!("Too many {limit} in one request: at most {max}.")
        }
        AppError::ReauthenticationRequired => {
            "This change needs a recent sign-in: sign in again (password or code), then retry.".into()
        }
        AppError::NotFound => "Not found.".into(),
        AppError::Unavailable(_) => "The service is temporarily unavailable. Try again.".into(),
        AppError::Overloaded { retry_after_seconds } => {
            format!("The service is busy. Try again in {retry_after_seconds} seconds.")
        }
        AppError::Internal(_) => "Internal server error.".into(),
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
        let code = code(&e);
        async_graphql::Error::new(client_message(&e)).extend_with(|_, ext| {
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
                AppError::LimitExceeded { limit, max } => {
                    ext.set("limit", *limit);
                    ext.set("max", *max as u64);
                }
                _ => {}
            }
        })
    }
}

/// A document the guard refused, as the error of a request that ran nothing.
pub(crate) fn refusal_error(refusal: Refusal) -> ServerError {
    let mut error = ServerError::new(refusal.message, None);
    let ext = error.extensions.get_or_insert_with(Default::default);
    ext.set("code", codes::QUERY_LIMIT_EXCEEDED);
    ext.set("limit", refusal.limit);
    ext.set("max", refusal.max as u64);
    error
}

/// A document that does not parse, as the error of a request that ran nothing: Apollo's code for it,
/// so clients and gateways tell a syntax error from a validation error.
pub(crate) fn parse_error(mut error: ServerError) -> ServerError {
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", codes::GRAPHQL_PARSE_FAILED);
    error
}

/// Errors from our resolvers always carry a code, and so do syntax errors (`parse_error`). Those that
/// do not come from async-graphql itself: a document that does not validate (no path), or an argument
/// it could not coerce.
pub fn tag_uncoded(error: &mut ServerError) {
    let has_code = error.extensions.as_ref().is_some_and(|e| e.get("code").is_some());
    if has_code {
        return;
    }
    let code = if error.path.is_empty() {
        codes::GRAPHQL_VALIDATION_FAILED
    } else {
        codes::BAD_USER_INPUT
    };
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", Value::String(code.into()));
}

#[cfg(test)]
mod code_list_tests {
    use super::codes;

    #[test]
    fn every_code_is_listed_and_interned() {
        let source = include_str!("error.rs");
        let declared: Vec<&str> = source
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const "))
            .filter(|l| !l.starts_with("ALL") && !l.starts_with("OTHER"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert!(declared.len() >= 24, "{declared:?}");
        for code in declared {
            assert_eq!(codes::intern(code), code, "{code} is missing from codes::ALL");
        }
        assert_eq!(codes::intern("made up"), codes::OTHER);
    }
}
