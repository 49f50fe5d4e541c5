//! Liveness is `/healthz` (the process answers); readiness is `/readyz`: the stores answer.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::http::HttpState;

/// 503 while draining (shutting down): a load balancer stops sending before the listener closes.
pub(super) async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    if state.draining.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "draining" })),
        )
            .into_response();
    }
    let ready = state.auth.readiness().await;
    if ready.embedded {
        return (StatusCode::OK, axum::Json(json!({ "store": "embedded" }))).into_response();
    }
    let status = if ready.postgres && ready.redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        axum::Json(json!({ "postgres": word(ready.postgres), "redis": word(ready.redis) })),
    )
        .into_response()
}
