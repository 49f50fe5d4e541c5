//! The GraphQL layer: thin resolvers that parse arguments into domain types, call one service
//! function, and map the result to output types. Errors go out through `From<AppError>`, which sets
//! `extensions.code`.

mod account;
pub mod documents;
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
/// REAUTHENTICATION_REQUIRED, NOT_FOUND, FORBIDDEN, SERVICE_UNAVAILABLE, INTERNAL_SERVER_ERROR.
#[derive(MergedObject, Default)]
pub struct Mutation(mutation::AuthMutation, account::AccountMutation);

#[derive(MergedObject, Default)]
pub struct Query(query::AuthQuery, account::AccountQuery);

pub type AuthSchema = Schema<Query, Mutation, EmptySubscription>;

/// What the HTTP layer learned about the caller, attached to each request with `Request::data`.
#[derive(Clone, Default)]
pub struct RequestContext {
    /// The token from `Authorization: Bearer`, the only place a token is read from.
    pub bearer: Option<String>,
    /// The caller's per-IP budget key (`client_ip::budget_key`).
    pub client: String,
    /// The caller's address and `User-Agent`, recorded on the sessions it signs in (`mySessions`).
    pub ip: Option<std::net::IpAddr>,
    pub user_agent: Option<String>,
    /// The caller (user, session id) once checked: at most one session lookup per request.
    pub viewer: Arc<OnceCell<Option<(User, Uuid)>>>,
}

impl std::fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestContext")
            .field("bearer", &self.bearer.as_ref().map(|_| "[redacted]"))
            .field("client", &self.client)
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
) -> AuthSchema {
    let builder = schema_builder().data(auth).extension(resolvers).extension(guard);
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
