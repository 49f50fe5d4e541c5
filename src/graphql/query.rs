use std::sync::Arc;

use async_graphql::{Context, Object, Result};

use crate::graphql::RequestContext;
use crate::graphql::types::User;
use crate::services::auth::AuthService;

pub struct Query;

#[Object]
impl Query {
    /// The signed-in user: null without a valid access token whose session is still live (not logged
    /// out, not expired).
    async fn me(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let auth = ctx.data_unchecked::<Arc<AuthService>>();
        let bearer = ctx
            .data_opt::<RequestContext>()
            .and_then(|r| r.bearer.as_deref());
        Ok(auth.current_user(bearer).await?.map(|(u, _)| u.into()))
    }
}
