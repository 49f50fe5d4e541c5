//! Counts field resolutions. Proves (in tests) that a refused document runs no resolver, and gives
//! operators a figure of work done.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextResolve, ResolveInfo};
use async_graphql::{ServerResult, Value};

#[derive(Clone, Default)]
pub struct ResolverCounter(Arc<AtomicU64>);

impl ResolverCounter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl ExtensionFactory for ResolverCounter {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(self.clone())
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for ResolverCounter {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        next.run(ctx, info).await
    }
}
