//! The GraphQL layer: thin resolvers that parse arguments into domain types, call one service
//! function, and map the result to output types. Errors go out through `From<AppError>`, which sets
//! `extensions.code`.

mod mutation;
mod query;
mod types;

use std::sync::Arc;

use async_graphql::{EmptySubscription, Schema, SchemaBuilder};

pub use mutation::Mutation;
pub use query::Query;

use crate::services::auth::AuthService;

pub type AuthSchema = Schema<Query, Mutation, EmptySubscription>;

/// What the HTTP layer learned about the caller, attached to each request with `Request::data`.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// The token from `Authorization: Bearer`, the only place a token is read from.
    pub bearer: Option<String>,
}

pub fn schema_builder() -> SchemaBuilder<Query, Mutation, EmptySubscription> {
    Schema::build(Query, Mutation, EmptySubscription)
}

pub fn build_schema(auth: Arc<AuthService>) -> AuthSchema {
    schema_builder().data(auth).finish()
}

/// The SDL committed as `schema.graphql` (a test fails when it drifts).
pub fn sdl() -> String {
    schema_builder().finish().sdl()
}
