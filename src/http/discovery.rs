//! Key discovery: the JWKS and the metadata document pointing at it, so gateways and other services
//! verify our access tokens without calling us.
//!
//! The metadata document says only what is true. This service is neither an OpenID Provider (it
//! issues no ID tokens, so `id_token_signing_alg_values_supported` and `subject_types_supported`,
//! which OpenID Connect Discovery 1.0 section 3 requires, would be claims about tokens that do not
//! exist) nor an OAuth 2.0 authorization server in RFC 8414's sense (no authorization or token
//! endpoint: its tokens come from GraphQL mutations, so `response_types_supported`, which RFC 8414
//! section 2 marks REQUIRED, and `token_endpoint_auth_methods_supported` have nothing to describe).
//! It publishes the two members a token verifier reads, both defined by RFC 8414 section 2: `issuer`
//! (REQUIRED; equal to the tokens' `iss`) and `jwks_uri` (the signing keys). It stays at the OpenID
//! path because that is where JWT verifiers look when given only an issuer; no
//! `/.well-known/oauth-authorization-server` is served, as it would have to claim the REQUIRED
//! members above.

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
    }))
    .into_response()
}
