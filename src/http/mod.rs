//! The HTTP edge: routes, the server loop, the client's address. GraphQL policy (document limits, the
//! document cache, error codes) lives in `graphql`; this layer only moves requests in and answers out.

mod discovery;
mod graphiql;
mod graphql;
mod health;

pub mod client_ip;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::graphql::AuthSchema;
use crate::graphql::error::codes;
use crate::http::client_ip::TrustedProxies;
use crate::services::auth::AuthService;

/// Set at SIGTERM: `/readyz` answers 503 and every response says `Connection: close`, while requests
/// are still served, until the listener closes (`SHUTDOWN_DRAIN_SECONDS` later).
#[derive(Clone, Default, Debug)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct HttpState {
    pub schema: AuthSchema,
    pub auth: Arc<AuthService>,
    pub trusted_proxies: TrustedProxies,
    /// GraphiQL at GET /graphql and its assets under /graphiql/ (`GRAPHIQL`; off in production by default).
    pub graphiql: bool,
    pub draining: Draining,
}

/// `max_body_bytes`: our largest legitimate request (register with a 128-character password and
/// names) is under 2 KiB; the default 32 KiB leaves room for hand-written queries.
pub fn router(state: HttpState, request_timeout: Duration, max_body_bytes: usize) -> Router {
    let draining = state.draining.clone();
    graphiql::routes(state.graphiql)
        .route("/graphql", get(graphql::graphql_get).post(graphql::graphql_post))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(health::readyz))
        .route("/.well-known/jwks.json", get(discovery::jwks))
        .route(
            "/.well-known/openid-configuration",
            get(discovery::openid_configuration),
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| async move {
                if declared_too_large(req.headers(), max_body_bytes) {
                    return request_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        codes::PAYLOAD_TOO_LARGE,
                        "The request body is too large.",
                    );
                }
                next.run(req).await
            },
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // A panic is a bug, but it must still be an answer with a code, not a dropped connection.
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            request_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::INTERNAL_SERVER_ERROR,
                "Internal server error.",
            )
        }))
        // While draining, clients close their keep-alive connections after this response: by the time
        // the listener closes, few idle connections are left to close under a client about to use one.
        .layer(axum::middleware::map_response(move |mut res: Response| {
            let draining = draining.is_draining();
            async move {
                if draining {
                    res.headers_mut().insert(
                        axum::http::header::CONNECTION,
                        axum::http::HeaderValue::from_static("close"),
                    );
                }
                res
            }
        }))
        // Outermost: every answer, a panic's included, gets a request id, an access line and metrics.
        .layer(axum::middleware::from_fn(crate::ops::logging::access_log))
        // One Arc per request instead of a clone of every field (measured: 2% of a request's CPU).
        .with_state(Arc::new(state))
}

/// Whether the request announces a body over the limit (`Content-Length`). Such a request is refused
/// from its head, before any of the body is read: reading first (the body limit alone) held the
/// connection of a client that announced 10 MiB and sent nothing for the whole request timeout, then
/// answered 408 (RFC 9110 15.5.14 allows 413 to close the connection without reading on).
fn declared_too_large(headers: &axum::http::HeaderMap, max_body_bytes: usize) -> bool {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max_body_bytes as u64)
}

/// A request-level failure (nothing was executed), in the GraphQL response shape.
pub(crate) fn request_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })),
    )
        .into_response()
}
