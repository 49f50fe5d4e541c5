//! Key discovery: the JWKS and the metadata document pointing at it, so gateways and other services
//! verify our access tokens without calling us.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::http::HttpState;

/// How long verifiers may cache the JWKS: fetching it on every token would put us on every request
/// path of every gateway. A key must therefore be published this long before it signs (JWT_NEXT_KEYS,
/// README "Behind a gateway").
pub const JWKS_MAX_AGE_SECONDS: u64 = 300;

pub(super) async fn jwks(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(
            header::CACHE_CONTROL,
            format!("public, max-age={JWKS_MAX_AGE_SECONDS}"),
        )],
        axum::Json(state.auth.jwks().clone()),
    )
        .into_response()
}

pub(super) async fn openid_configuration(State(state): State<Arc<HttpState>>) -> Response {
    let issuer = state.auth.issuer();
    let base = issuer.trim_end_matches('/');
    axum::Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }))
    .into_response()
}
