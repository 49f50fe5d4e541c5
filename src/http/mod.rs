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
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
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
    /// The browser-app settings: CORS and the refresh cookie.
    pub browser: BrowserApps,
}

/// Who may call from a browser, and whether the refresh token also travels as a cookie.
#[derive(Clone, Debug, Default)]
pub struct BrowserApps {
    /// CORS_ALLOWED_ORIGINS, exact origins (or `*` without cookies).
    pub allowed_origins: Vec<String>,
    /// REFRESH_TOKEN_COOKIE.
    pub refresh_cookie: bool,
    /// The origin of JWT_ISSUER (`scheme://host[:port]`): a request from it is same-origin.
    pub issuer_origin: String,
}

/// Preflight results are cached this long (`Access-Control-Max-Age`). Browsers cap it (Chromium at
/// 7,200 s, Firefox at 86,400 s; Chromium before version 76 at 600 s), so 600 s is honoured as is
/// everywhere: one preflight per 10 minutes per client, and an origin removed from
/// CORS_ALLOWED_ORIGINS is refused by every browser within 10 minutes.
pub const CORS_MAX_AGE_SECONDS: u64 = 600;

/// The CORS layer (tower-http) for `browser`, or None when no origin is allowed.
fn cors_layer(browser: &BrowserApps) -> Option<CorsLayer> {
    if browser.allowed_origins.is_empty() {
        return None;
    }
    let origin = if browser.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            browser
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    // Only what a GraphQL client sends: JSON bodies by POST, queries by GET, a bearer token. The
    // cookie mode adds no header, but needs Access-Control-Allow-Credentials so that the browser
    // sends and accepts the cookie cross-origin (`Config::validate` refuses `*` with it).
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .allow_credentials(browser.refresh_cookie)
            .max_age(Duration::from_secs(CORS_MAX_AGE_SECONDS)),
    )
}

/// tower-http answers every preflight 200, and adds the method, header and max-age headers even when
/// the origin is not allowed. Here a preflight is 204 (no content), and a response without
/// `Access-Control-Allow-Origin` carries no CORS header at all: a refused origin learns nothing.
async fn tidy_cors(method: Method, response: Response) -> Response {
    let mut response = response;
    let allowed = response
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    if !allowed {
        let names: Vec<_> = response
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in names {
            response.headers_mut().remove(name);
        }
    }
    if method == Method::OPTIONS && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

/// `max_body_bytes`: our largest legitimate request (register with a 128-character password and
/// names) is under 2 KiB; the default 32 KiB leaves room for hand-written queries.
pub fn router(state: HttpState, request_timeout: Duration, max_body_bytes: usize) -> Router {
    let draining = state.draining.clone();
    let cors = cors_layer(&state.browser);
    let router = graphiql::routes(state.graphiql)
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
        // One Arc per request instead of a clone of every field (measured: 2% of a request's CPU).
        .with_state(Arc::new(state));
    let router = match cors {
        // Outside the handlers: a preflight is answered before the timeout, body limit and handlers.
        Some(cors) => only_with_origin(
            router.clone(),
            router.layer(cors).layer(axum::middleware::map_response(
                |method: Method, response: Response| tidy_cors(method, response),
            )),
        ),
        None => router,
    };
    // Outermost: every answer, a panic's and a preflight's included, gets a request id, an access
    // line and metrics.
    router.layer(axum::middleware::from_fn(crate::ops::logging::access_log))
}

/// Requests with an `Origin` (browsers) go through the CORS layers; the others (servers, native
/// apps, gateways) skip them: CORS means nothing to them, and the layer's work on every response
/// (measured: `me` 5% slower with CORS on) is then not paid by every client. Both answers say
/// `Vary: Origin` (and the preflight headers), as tower-http's does, so a shared cache never serves
/// an answer made without CORS headers to a browser that needs them.
fn only_with_origin(plain: Router, with_cors: Router) -> Router {
    use tower::ServiceExt as _;
    static VARY: HeaderValue =
        HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers");
    Router::new().fallback_service(tower::service_fn(move |req: axum::extract::Request| {
        let browser = req.headers().contains_key(header::ORIGIN);
        let (plain, with_cors) = (plain.clone(), with_cors.clone());
        async move {
            if browser {
                return with_cors.oneshot(req).await;
            }
            let mut response = plain.oneshot(req).await?;
            response.headers_mut().append(header::VARY, VARY.clone());
            Ok(response)
        }
    }))
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
