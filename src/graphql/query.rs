use async_graphql::{Context, ID, Object, Result};

use crate::graphql::entities::user_for;
use crate::graphql::types::User;
use crate::graphql::viewer;

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
    /// All references of one `_entities` field are loaded with one SQL statement (`entities.rs`).
    #[graphql(entity)]
    async fn find_user_by_id(&self, ctx: &Context<'_>, id: ID) -> Result<Option<User>> {
        Ok(user_for(ctx, &id).await?.map(User::of_other))
    }
}
