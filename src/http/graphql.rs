//! The GraphQL transport over HTTP: POST and GET /graphql, media types, the bearer token, the refresh
//! cookie of the cookie mode and its Origin check, the client's address, and GraphiQL.
//!
//! We do not use async-graphql-axum's extractor for POST: as it comes it accepts JSON-array batches,
//! text/plain and form bodies (a cross-site request path with no CORS preflight) and reads up to 5 MiB.
//! Here a request is one JSON object, sent as `application/json`, of at most `MAX_BODY_BYTES`.

use std::net::SocketAddr;
use std::sync::Arc;

use async_graphql::Value;
use async_graphql::parser::types::OperationType;
use async_graphql_axum::GraphQLResponse;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::graphql::error::{codes, tag_uncoded};
use crate::graphql::{REFRESH_COOKIE, RequestContext};
use crate::http::client_ip::budget_key;
use crate::http::{BrowserApps, HttpState, request_error};
use crate::ops::logging::GraphqlOutcome;
use crate::services::audit::{CALLER, Caller};

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// The `__Host-refresh` cookie of the request, if it sent one (RFC 6265 section 5.4: `name=value`
/// pairs separated by `; `).
fn refresh_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == REFRESH_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// CSRF defence of the cookie mode: a request that carries the refresh cookie and may run a mutation
/// must come from an allowed origin (CORS_ALLOWED_ORIGINS) or from our own (the `Host` it was sent
/// to, or JWT_ISSUER's origin). Browsers send `Origin` with every POST, same-origin included (Fetch
/// standard), so a missing or `null` Origin is refused too (OWASP CSRF Prevention Cheat Sheet,
/// "Verifying Origin With Standard Headers"). The body must also be JSON, which `graphql_post`
/// already requires: a cross-site form cannot send it without a CORS preflight.
fn origin_allowed(headers: &HeaderMap, browser: &BrowserApps) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin = origin.trim_end_matches('/');
    if browser.allowed_origins.iter().any(|o| o == origin) || origin == browser.issuer_origin {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, h)| h);
    host.is_some() && origin_host == host
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

pub(super) async fn graphql_post(
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
                codes::PAYLOAD_TOO_LARGE,
                "The request body is too large.",
            );
        }
        Err(e) => {
            return request_error(
                e.status(),
                codes::BAD_REQUEST,
                "The request body could not be read.",
            );
        }
    };
    if !is_json(&headers) {
        return request_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            codes::UNSUPPORTED_MEDIA_TYPE,
            "Send the GraphQL request as Content-Type: application/json.",
        );
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return request_error(
            StatusCode::BAD_REQUEST,
            codes::BATCH_NOT_SUPPORTED,
            "Batched requests are not supported: send one operation per request.",
        );
    }
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("The body is not a valid GraphQL request in JSON: {e}");
            return request_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, &message);
        }
    };
    execute(&state, request, &headers, peer).await
}

pub(super) async fn graphql_get(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        if !state.graphiql {
            return request_error(
                StatusCode::BAD_REQUEST,
                codes::BAD_REQUEST,
                "Pass the GraphQL query as ?query=...",
            );
        }
        return crate::http::graphiql::page();
    };
    let mut request = match async_graphql::http::parse_query_string(&query) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("The query string is not a valid GraphQL request: {e}");
            return request_error(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, &message);
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
            codes::METHOD_NOT_ALLOWED,
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
            codes::NOT_ACCEPTABLE,
            "This endpoint answers application/graphql-response+json or application/json.",
        );
    };
    // A request without a document: say so, rather than let the parser report an empty document.
    if request.query.trim().is_empty() {
        // Apollo's automatic persisted queries send only a hash first; this code (and a 400) tells
        // Apollo Client's persisted-query link to stop trying and send the document itself.
        if request.extensions.get("persistedQuery").is_some() {
            return request_error(
                StatusCode::BAD_REQUEST,
                codes::PERSISTED_QUERY_NOT_SUPPORTED,
                "PersistedQueryNotSupported: persisted queries are not supported; send the document in `query`.",
            );
        }
        return request_error(
            StatusCode::BAD_REQUEST,
            codes::BAD_REQUEST,
            "The request has no `query`: send the GraphQL document as a string in `query`.",
        );
    }
    let cookie = if state.browser.refresh_cookie {
        refresh_cookie(headers)
    } else {
        None
    };
    if cookie.is_some() && !origin_allowed(headers, &state.browser) {
        let may_mutate = request.parsed_query().map_or(true, |doc| {
            doc.operations
                .iter()
                .any(|(_, op)| op.node.ty == OperationType::Mutation)
        });
        if may_mutate {
            return request_error(
                StatusCode::FORBIDDEN,
                codes::FORBIDDEN,
                "A mutation that carries the refresh cookie must come from an allowed origin.",
            );
        }
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
        refresh_cookie_mode: state.browser.refresh_cookie,
        refresh_cookie: cookie,
        // Browsers send Origin with every POST; native apps and servers do not.
        from_browser: headers.contains_key(header::ORIGIN),
        ip: Some(client_ip),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        ..RequestContext::default()
    };
    let operation = context.operation.clone();
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let caller = Caller::new(client_ip, user_agent);
    let mut response = CALLER
        .scope(caller, state.schema.execute(request.data(context)))
        .await;
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
    let info = operation.get().copied();
    let outcome = GraphqlOutcome {
        kind: info.map_or("none", |i| i.kind),
        operation: info.map_or("none", |i| i.root_field),
        codes: response
            .errors
            .iter()
            .filter_map(|e| e.extensions.as_ref()?.get("code"))
            .map(|code| match code {
                Value::String(s) => crate::graphql::error::codes::intern(s),
                _ => crate::graphql::error::codes::OTHER,
            })
            .collect(),
        client_ip,
    };
    let mut http = if request_failed {
        // "If an error was raised before execution begins, the data entry should not be present"
        // (GraphQL spec, Response; GraphQL over HTTP says the same for both media types).
        let mut body = serde_json::json!({ "errors": response.errors });
        if !response.extensions.is_empty() {
            body["extensions"] = serde_json::json!(response.extensions);
        }
        axum::Json(body).into_response()
    } else {
        GraphQLResponse::from(response).into_response()
    };
    http.extensions_mut().insert(outcome);
    *http.status_mut() = status;
    let h = http.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    // Responses carry tokens: never cached by a browser or a proxy.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    http
}
