//! The GraphQL layer: thin resolvers that parse arguments into domain types, call one service
//! function, and map the result to output types. Errors go out through `From<AppError>`, which sets
//! `extensions.code`.

mod account;
pub mod documents;
pub mod entities;
pub mod error;
pub mod guard;
pub mod metrics;
mod mutation;
mod query;
mod types;

use std::sync::Arc;

use async_graphql::{Context, EmptySubscription, MergedObject, Schema, SchemaBuilder};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::services::auth::AuthService;
use crate::services::sessions::Device;
use crate::services::users::User;

/// Sign-up and sign-in by phone, and the rest of an account's life.
///
/// Errors carry `extensions.code`: BAD_USER_INPUT (with `field`, and `reason`), INVALID_CODE,
/// TOO_MANY_ATTEMPTS, RATE_LIMITED (with `retryAfterSeconds`), INVALID_CREDENTIALS, ACCOUNT_LOCKED
/// (with `retryAfterSeconds`), INVALID_TOKEN, PHONE_ALREADY_REGISTERED, UNAUTHENTICATED,
/// REAUTHENTICATION_REQUIRED, NOT_FOUND, SERVICE_UNAVAILABLE, INTERNAL_SERVER_ERROR; and,
/// before anything runs, FORBIDDEN (HTTP 403) for a mutation that carries the refresh cookie from an
/// origin not allowed.
#[derive(MergedObject, Default)]
pub struct Mutation(mutation::AuthMutation, account::AccountMutation);

#[derive(MergedObject, Default)]
pub struct Query(query::AuthQuery, account::AccountQuery);

pub type AuthSchema = Schema<Query, Mutation, EmptySubscription>;

/// The refresh cookie of the cookie mode (`REFRESH_TOKEN_COOKIE`). The `__Host-` prefix makes the
/// browser accept it only with Secure, Path=/ and no Domain (RFC 6265bis section 4.1.3.2): no
/// subdomain or plain-HTTP page can set or overwrite it.
pub const REFRESH_COOKIE: &str = "__Host-refresh";

/// What the HTTP layer learned about the caller, attached to each request with `Request::data`.
#[derive(Clone, Default)]
pub struct RequestContext {
    /// The token from `Authorization: Bearer`, the only place a token is read from.
    pub bearer: Option<String>,
    /// The caller's per-IP budget key (`client_ip::budget_key`).
    pub client: String,
    /// REFRESH_TOKEN_COOKIE is on: sign-ins set the refresh cookie.
    pub refresh_cookie_mode: bool,
    /// The request's `__Host-refresh` cookie (cookie mode only; the HTTP layer has checked its Origin).
    pub refresh_cookie: Option<String>,
    /// The request has an `Origin` header: a browser (which sends it with every POST).
    pub from_browser: bool,
    /// The caller's address and `User-Agent`, recorded on the sessions it signs in (`mySessions`).
    pub ip: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
    /// The caller (user, session id) once checked: at most one session lookup per request.
    pub viewer: Arc<OnceCell<Option<(User, Uuid)>>>,
    /// Federation `_entities` loads: one SQL statement per `_entities` field (`entities.rs`).
    pub user_batches: Arc<entities::UserBatches>,
    /// What the document asks for (set when it parsed): for the access log and the metrics.
    pub operation: Arc<std::sync::OnceLock<OperationInfo>>,
}

/// The kind and first root field of the operation a request runs.
#[derive(Clone, Copy, Debug)]
pub struct OperationInfo {
    pub kind: &'static str,
    pub root_field: &'static str,
}

impl std::fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestContext")
            .field("bearer", &self.bearer.as_ref().map(|_| "[redacted]"))
            .field("client", &self.client)
            .field(
                "refresh_cookie",
                &self.refresh_cookie.as_ref().map(|_| "[redacted]"),
            )
            .finish_non_exhaustive()
    }
}

/// The device of the caller, for a session it signs in.
pub(crate) fn device(ctx: &Context<'_>) -> Device {
    ctx.data_opt::<RequestContext>()
        .map(|r| Device::new(r.user_agent.as_deref(), r.ip))
        .unwrap_or_default()
}

/// The signed-in caller of this request: a valid bearer token whose session is live.
pub async fn viewer<'a>(ctx: &Context<'a>) -> Result<Option<&'a (User, Uuid)>, crate::error::AppError> {
    let Some(request) = ctx.data_opt::<RequestContext>() else {
        return Ok(None);
    };
    let auth = ctx.data_unchecked::<Arc<AuthService>>();
    request
        .viewer
        .get_or_try_init(|| async { auth.current_user(request.bearer.as_deref()).await })
        .await
        .map(Option::as_ref)
}

pub fn schema_builder() -> SchemaBuilder<Query, Mutation, EmptySubscription> {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription).enable_federation()
}

/// In production, introspection and "did you mean" suggestions are off: they map the API for an
/// attacker (OWASP GraphQL Cheat Sheet). The schema is public in `schema.graphql` for those who need it.
pub fn build_schema(
    auth: Arc<AuthService>,
    production: bool,
    resolvers: metrics::ResolverCounter,
    guard: documents::DocumentGuard,
    max_entity_representations: usize,
) -> AuthSchema {
    let builder = schema_builder()
        .data(auth)
        .data(entities::EntityLimit(max_entity_representations))
        .extension(resolvers)
        .extension(guard);
    if production {
        builder.disable_introspection().disable_suggestions().finish()
    } else {
        builder.finish()
    }
}

/// The SDL committed as `schema.graphql` (a test fails when it drifts): the federation form, as
/// `{ _service { sdl } }` returns it.
pub fn sdl() -> String {
    schema_builder()
        .finish()
        .sdl_with_options(async_graphql::SDLExportOptions::new().federation())
}
