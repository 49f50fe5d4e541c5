//! Federation `_entities` for `User`, batched per request.
//!
//! A gateway sends every `User` reference of a response in one `_entities` request (Apollo Gateway
//! and Router deduplicate them and make one fetch per subgraph), but async-graphql's
//! `#[graphql(entity)]` resolves each representation on its own: 500 references would be 500 SQL
//! statements. Here the first representation resolved reads the whole `representations` argument of
//! its `_entities` field, loads every distinct well-formed id with ONE statement
//! (`where id = any($1)`), and every representation of that field is answered from that load.
//! Deterministic: no timer, no window in which a reference could miss the batch.
//!
//! Before any query, a request with more than `max` representations is refused with
//! QUERY_LIMIT_EXCEEDED (`limit: "representations"`): see `MAX_ENTITY_REPRESENTATIONS`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_graphql::{Any, Context, Value};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::error::AppError;
use crate::services::auth::AuthService;
use crate::services::users::User;

/// Schema data: the most representations one `_entities` field may carry.
#[derive(Clone, Copy, Debug)]
pub struct EntityLimit(pub usize);

type Loaded = Arc<HashMap<Uuid, User>>;

/// Request data (in `RequestContext`): one load per `_entities` field of the request, by its response
/// key (a document may alias `_entities` several times, each with its own representations).
#[derive(Default)]
pub struct UserBatches {
    by_field: Mutex<HashMap<String, Arc<OnceCell<Loaded>>>>,
}

impl UserBatches {
    fn cell(&self, field: &str) -> Arc<OnceCell<Loaded>> {
        let mut map = self.by_field.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(field.to_owned()).or_default().clone()
    }
}

/// The user a `User` representation with this `id` names, loading the whole field's batch first if
/// this is the first representation of the field to be resolved. `None`: unknown or malformed id.
pub async fn user_for(ctx: &Context<'_>, id: &str) -> Result<Option<User>, AppError> {
    let Ok(id) = Uuid::parse_str(id) else {
        return Ok(None);
    };
    let field = ctx.item.node.response_key().node.to_string();
    let local;
    let cell = match ctx.data_opt::<crate::graphql::RequestContext>() {
        Some(request) => request.user_batches.cell(&field),
        None => {
            // Executed without our HTTP layer (a unit test of the schema): a batch of this call only.
            local = Arc::new(OnceCell::new());
            local.clone()
        }
    };
    let loaded = cell.get_or_try_init(|| load(ctx)).await?;
    Ok(loaded.get(&id).cloned())
}

async fn load(ctx: &Context<'_>) -> Result<Loaded, AppError> {
    let max = ctx.data_opt::<EntityLimit>().map_or(usize::MAX, |l| l.0);
    let (_, representations) = ctx
        .param_value::<Vec<Any>>("representations", None)
        .map_err(|e| AppError::bad_input("representations", "INVALID", e.message))?;
    if representations.len() > max {
        return Err(AppError::LimitExceeded {
            limit: "representations",
            max,
        });
    }
    let ids: HashSet<Uuid> = representations
        .iter()
        .filter_map(|Any(rep)| match rep {
            Value::Object(o) if o.get("__typename") == Some(&Value::String("User".into())) => {
                match o.get("id") {
                    Some(Value::String(id)) => Uuid::parse_str(id).ok(),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    let ids: Vec<Uuid> = ids.into_iter().collect();
    let auth = ctx.data_unchecked::<Arc<AuthService>>();
    let users = auth.users_by_ids(&ids).await?;
    Ok(Arc::new(users.into_iter().map(|u| (u.id, u)).collect()))
}
