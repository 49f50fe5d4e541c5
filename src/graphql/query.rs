use std::sync::Arc;

use async_graphql::{Context, ID, Object, Result};
use uuid::Uuid;

use crate::graphql::types::User;
use crate::graphql::viewer;
use crate::services::auth::AuthService;

#[derive(Default)]
pub struct AuthQuery;

#[Object]
impl AuthQuery {
    /// The signed-in user: null without a valid access token whose session is still live (not logged
    /// out, not expired).
    async fn me(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        Ok(viewer(ctx).await?.map(|(user, _)| User::of_viewer(user.clone())))
    }

    /// Federation: resolves a `User` reference by id (`_entities`). Unknown or malformed ids give null.
    #[graphql(entity)]
    async fn find_user_by_id(&self, ctx: &Context<'_>, id: ID) -> Result<Option<User>> {
        let auth = ctx.data_unchecked::<Arc<AuthService>>();
        let Ok(id) = Uuid::parse_str(&id) else {
            return Ok(None);
        };
        Ok(auth.user_by_id(id).await?.map(User::of_other))
    }
}
