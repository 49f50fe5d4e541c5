//! The HTTP edge: routes, the GraphQL transport, health and key discovery.
//!
//! We do not use async-graphql-axum's extractor for POST: as it comes it accepts JSON-array batches,
//! text/plain and form bodies (a cross-site request path with no CORS preflight) and reads up to 5 MiB.
//! Here a request is one JSON object, sent as `application/json`, of at most `MAX_BODY_BYTES`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::parser::types::OperationType;
use async_graphql::{ServerError, Value};
use async_graphql_axum::GraphQLResponse;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use redis::aio::ConnectionManager;
use serde_json::json;
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::client_ip::{TrustedProxies, budget_key};
use crate::error::codes;
use crate::graphql::documents::DocumentCache;
use crate::graphql::guard::DocumentLimits;
use crate::graphql::{AuthSchema, RequestContext};
use crate::services::auth::AuthService;

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

#[derive(Clone)]
pub struct HttpState {
    pub schema: AuthSchema,
    pub auth: Arc<AuthService>,
    pub pg: PgPool,
    pub redis: ConnectionManager,
    pub issuer: String,
    pub limits: Arc<DocumentLimits>,
    pub documents: Arc<DocumentCache>,
    pub trusted_proxies: Arc<TrustedProxies>,
    /// GraphiQL at GET /graphql and its assets under /graphiql/ (`GRAPHIQL`; off in production by default).
    pub graphiql: bool,
}

/// `max_body_bytes`: our largest legitimate request (register with a 128-character password and
/// names) is under 2 KiB; the default 32 KiB leaves room for hand-written queries.
pub fn router(state: HttpState, request_timeout: Duration, max_body_bytes: usize) -> Router {
    crate::graphiql::routes(state.graphiql)
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(openid_configuration))
        .layer(DefaultBodyLimit::max(max_body_bytes))
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
        // One Arc per request instead of a clone of every field (measured: 2% of a request's CPU).
        .with_state(Arc::new(state))
}

/// A request-level failure (nothing was executed), in the GraphQL response shape.
fn request_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })),
    )
        .into_response()
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    // Only `Authorization: Bearer`: never a cookie or a query parameter, so a token cannot ride along
    // on a cross-site request or land in an access log.
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Which JSON media type the client wants back. `application/graphql-response+json` (GraphQL over
/// HTTP) when it asks for it; `application/json` otherwise. None: it accepts neither.
fn response_media_type(headers: &HeaderMap) -> Option<&'static str> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Some("application/json");
    };
    let types: Vec<&str> = accept
        .split(',')
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .collect();
    if types
        .iter()
        .any(|t| t.eq_ignore_ascii_case(GRAPHQL_RESPONSE_JSON))
    {
        Some(GRAPHQL_RESPONSE_JSON)
    } else if types.iter().any(|t| {
        t.eq_ignore_ascii_case("application/json") || *t == "*/*" || t.eq_ignore_ascii_case("application/*")
    }) {
        Some("application/json")
    } else {
        None
    }
}

async fn graphql_post(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return request_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "The request body is too large.",
            );
        }
        Err(e) => {
            return request_error(e.status(), "BAD_REQUEST", "The request body could not be read.");
        }
    };
    if !is_json(&headers) {
        return request_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "Send the GraphQL request as Content-Type: application/json.",
        );
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return request_error(
            StatusCode::BAD_REQUEST,
            "BATCH_NOT_SUPPORTED",
            "Batched requests are not supported: send one operation per request.",
        );
    }
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("The body is not a valid GraphQL request in JSON: {e}");
            return request_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", &message);
        }
    };
    execute(&state, request, &headers, peer).await
}

async fn graphql_get(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        if !state.graphiql {
            return request_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "Pass the GraphQL query as ?query=...",
            );
        }
        return crate::graphiql::page();
    };
    let mut request = match async_graphql::http::parse_query_string(&query) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("The query string is not a valid GraphQL request: {e}");
            return request_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", &message);
        }
    };
    // GET must be safe: a mutation by GET could be triggered by a link or an <img> (GraphQL over HTTP).
    if let Ok(doc) = request.parsed_query()
        && doc
            .operations
            .iter()
            .any(|(_, op)| op.node.ty != OperationType::Query)
    {
        let mut response = request_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "Mutations must be sent with POST.",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    execute(&state, request, &headers, peer).await
}

async fn execute(
    state: &HttpState,
    mut request: async_graphql::Request,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Response {
    let Some(media_type) = response_media_type(headers) else {
        return request_error(
            StatusCode::NOT_ACCEPTABLE,
            "NOT_ACCEPTABLE",
            "This endpoint answers application/graphql-response+json or application/json.",
        );
    };
    // The shape limits run on the parsed document before anything executes (a document seen before
    // comes parsed and checked from the cache). A document that does not parse is left to
    // async-graphql, which reports it (and runs nothing).
    if let Err(refusal) = state.documents.prepare(&mut request, &state.limits) {
        let status = if media_type == GRAPHQL_RESPONSE_JSON {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        };
        let body = json!({ "errors": [{ "message": refusal.message, "extensions": {
            "code": "QUERY_LIMIT_EXCEEDED", "limit": refusal.limit, "max": refusal.max } }] });
        return (status, [(header::CONTENT_TYPE, media_type)], axum::Json(body)).into_response();
    }
    // Every X-Forwarded-For line, in order: a proxy may append its own line rather than extend the
    // client's, and reading only the first would believe the client's forgery.
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded = (!forwarded.is_empty()).then(|| forwarded.join(","));
    let client_ip = state.trusted_proxies.client_ip(peer.ip(), forwarded.as_deref());
    let context = RequestContext {
        bearer: bearer_token(headers),
        client: budget_key(client_ip),
        ..RequestContext::default()
    };
    let mut response = state.schema.execute(request.data(context)).await;
    for error in &mut response.errors {
        tag_uncoded(error);
    }
    // GraphQL over HTTP: with the new media type, a request that never executed (parse or validation
    // failure: no data, only errors without a path) is a 400; application/json keeps 200.
    let request_failed = response.data == Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty());
    let status = if media_type == GRAPHQL_RESPONSE_JSON && request_failed {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut http = GraphQLResponse::from(response).into_response();
    *http.status_mut() = status;
    let h = http.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    // Responses carry tokens: never cached by a browser or a proxy.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    http
}

/// Errors from our resolvers always carry a code. Those that do not come from async-graphql itself:
/// a document that does not parse or validate (no path), or an argument it could not coerce.
fn tag_uncoded(error: &mut ServerError) {
    let has_code = error.extensions.as_ref().is_some_and(|e| e.get("code").is_some());
    if has_code {
        return;
    }
    let code = if error.path.is_empty() {
        "GRAPHQL_VALIDATION_FAILED"
    } else {
        codes::BAD_USER_INPUT
    };
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", Value::String(code.into()));
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    let pg = sqlx::query("select 1").execute(&state.pg);
    let mut redis = state.redis.clone();
    let ping_cmd = redis::cmd("PING");
    let ping = ping_cmd.query_async::<String>(&mut redis);
    let (pg, redis) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(2), pg),
        tokio::time::timeout(Duration::from_secs(2), ping)
    );
    let pg_ok = matches!(pg, Ok(Ok(_)));
    let redis_ok = matches!(redis, Ok(Ok(_)));
    let status = if pg_ok && redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        axum::Json(json!({ "postgres": word(pg_ok), "redis": word(redis_ok) })),
    )
        .into_response()
}

async fn jwks(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(state.auth.tokens.jwks().clone()),
    )
        .into_response()
}

async fn openid_configuration(State(state): State<Arc<HttpState>>) -> Response {
    let issuer = state.issuer.trim_end_matches('/');
    axum::Json(json!({
        "issuer": state.issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }))
    .into_response()
}
