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
    /// A request-level ceiling was exceeded before any work (`limit` names it: `representations`).
    LimitExceeded {
        limit: &'static str,
        max: usize,
    },
    /// A sensitive change (new phone, deleting the account) needs a session signed in within the last
    /// `REAUTH_SECONDS`; this one is older: sign in again.
    ReauthenticationRequired,
    /// No such thing for this caller (a session id that is not one of the caller's live sessions:
    /// another user's is answered the same as one that never existed).
    NotFound,
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

/// SQLSTATEs that say the server cannot serve now, not that the statement is wrong (PostgreSQL
/// Appendix A): class 08 connection exception, class 53 insufficient resources (53300
/// too_many_connections, disk full, out of memory), 57P01 admin_shutdown, 57P02 crash_shutdown,
/// 57P03 cannot_connect_now ("the database system is not currently accepting connections", during
/// start-up, shutdown or recovery).
fn sqlstate_is_unavailable(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || matches!(code, "57P01" | "57P02" | "57P03")
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        let unavailable = match &e {
            // Pool exhaustion and connection loss are retryable, not bugs.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| sqlstate_is_unavailable(&c)),
            _ => false,
        };
        if unavailable {
            crate::ops::metrics::store_error("postgres", "unavailable");
            AppError::Unavailable(anyhow::Error::new(e).context("postgres"))
        } else {
            crate::ops::metrics::store_error("postgres", "other");
            AppError::Internal(anyhow::Error::new(e).context("postgres"))
        }
    }
}

/// Whether a Redis error says Redis cannot serve now (the client may retry), rather than that our
/// command or script is wrong (a bug: a Lua error `ERR user_script...`, WRONGTYPE, a reply of an
/// unexpected type).
fn redis_is_unavailable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    if e.is_io_error() {
        // Refused, reset, broken pipe, timed out.
        return true;
    }
    match e.kind() {
        // The cluster client has no connection to the node that owns the slot (it died, and the
        // cluster has not promoted its replica yet): a failover in progress.
        ErrorKind::ClusterConnectionNotFound => true,
        // The slot moved (a failover's promotion, a resharding) and the client's retries ran out
        // before its refreshed view caught up: the topology is changing, not our command wrong.
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask) => true,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => true,
        // Codes redis-rs has no kind for: out of memory (maxmemory), a script running too long,
        // persistence failing, too few replicas.
        _ => matches!(e.code(), Some("OOM" | "BUSY" | "MISCONF" | "NOREPLICAS")),
    }
}

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            "connection"
        } else {
            "other"
        };
        crate::ops::metrics::store_error("redis", kind);
        if redis_is_unavailable(&e) {
            AppError::Unavailable(anyhow::Error::new(e).context("redis"))
        } else {
            AppError::Internal(anyhow::Error::new(e).context("redis"))
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[derive(Debug)]
    struct PgError(&'static str);

    impl std::fmt::Display for PgError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for PgError {}

    impl sqlx::error::DatabaseError for PgError {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn pg(code: &'static str) -> AppError {
        sqlx::Error::Database(Box::new(PgError(code))).into()
    }

    fn redis_reply(line: &str) -> AppError {
        let value = redis::parse_redis_value(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
        match value.extract_error() {
            Err(e) => e.into(),
            Ok(v) => panic!("{line} is not an error: {v:?}"),
        }
    }

    #[test]
    fn postgres_refusing_connections_is_unavailable() {
        for code in ["57P03", "53300", "57P01", "57P02", "08006", "08001", "53100"] {
            assert!(matches!(pg(code), AppError::Unavailable(_)), "{code}");
        }
        let io: AppError = sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()).into();
        assert!(matches!(io, AppError::Unavailable(_)));
        assert!(matches!(
            AppError::from(sqlx::Error::PoolTimedOut),
            AppError::Unavailable(_)
        ));
    }

    #[test]
    fn postgres_statement_errors_are_internal() {
        // syntax error, undefined column, unique violation, query canceled
        for code in ["42601", "42703", "23505", "57014"] {
            assert!(matches!(pg(code), AppError::Internal(_)), "{code}");
        }
        assert!(matches!(
            AppError::from(sqlx::Error::RowNotFound),
            AppError::Internal(_)
        ));
    }

    #[test]
    fn redis_down_or_busy_is_unavailable() {
        for kind in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::TimedOut,
        ] {
            let e: AppError = redis::RedisError::from(std::io::Error::from(kind)).into();
            assert!(matches!(e, AppError::Unavailable(_)), "{kind:?}");
        }
        for line in [
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-BUSY Redis is busy running a script.\r\n",
            "-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            "-READONLY You can't write against a read only replica.\r\n",
            "-MASTERDOWN Link with MASTER is down\r\n",
        ] {
            assert!(matches!(redis_reply(line), AppError::Unavailable(_)), "{line}");
        }
    }

    #[test]
    fn redis_script_and_type_errors_are_internal() {
        for line in [
            "-ERR user_script:1: Script attempted to access nonexistent global variable 'x'\r\n",
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            "-NOSCRIPT No matching script.\r\n",
        ] {
            assert!(matches!(redis_reply(line), AppError::Internal(_)), "{line}");
        }
        let wrong_type: Result<i64, _> = redis::from_redis_value(redis::Value::SimpleString("OK".into()));
        let e: AppError = redis::RedisError::from(wrong_type.expect_err("not an integer")).into();
        assert!(matches!(e, AppError::Internal(_)));
    }
}
