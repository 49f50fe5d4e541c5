//! What the service requires of its Redis, checked at start (`services::redis_server`): in production
//! a server that would lose locks and budgets (eviction allowed, no AOF and no replica) is refused,
//! naming what is wrong; a Redis Cluster is refused in every profile. Each test runs a private
//! redis-server configured for it.

use phone_auth::app::build;
use phone_auth::config::{AppEnv, Config, DurabilityCheck};
use phone_auth::services::sms::{SmsSender, TestSender};
use secrecy::SecretString;

use crate::helpers::*;
use crate::private_redis::PrivateRedis;

/// A complete production profile pointed at `redis` (the SMS sender is the test's).
fn production(c: &mut Config, redis: &PrivateRedis) {
    c.app_env = AppEnv::Production;
    // Production refuses a loopback issuer (the address gateways reach us at).
    c.tokens.jwt_issuer = Some("https://auth.example.com".into());
    c.stores.redis_durability_check = DurabilityCheck::Refuse;
    c.stores.redis_url = Some(SecretString::from(redis.url.clone()));
    c.stores.redis_cluster_urls = None;
    c.tokens.jwt_signing_keys = Some(SecretString::from(
        phone_auth::services::tokens::SigningKey::generate()
            .unwrap()
            .to_config(),
    ));
}

async fn start_error(config: &Config) -> String {
    let sender = std::sync::Arc::new(TestSender::default()) as std::sync::Arc<dyn SmsSender>;
    match build(config, Some(sender)).await {
        Ok(_) => panic!("the start was not refused"),
        Err(e) => format!("{e:#}"),
    }
}

/// Eviction allowed and no AOF: a production start is refused naming both; REDIS_DURABILITY_CHECK=warn
/// lets it start. (The refusal comes before PostgreSQL is touched: this test needs no database.)
#[tokio::test]
async fn production_refuses_a_redis_that_would_lose_locks() {
    crate::real_stores_only!("the durability check of a real Redis server (private redis-server)");
    let redis = PrivateRedis::start(&["--appendonly", "no", "--maxmemory-policy", "allkeys-lru"]);
    let mut config = test_config();
    production(&mut config, &redis);
    config.stores.database_url = Some(SecretString::from(format!(
        "{}/phone_auth_never_created",
        server_url()
    )));
    let err = start_error(&config).await;
    assert!(err.contains("APP_ENV=production"), "{err}");
    assert!(err.contains("maxmemory-policy is allkeys-lru"), "{err}");
    assert!(err.contains("appendonly is off"), "{err}");
    assert!(err.contains("REDIS_DURABILITY_CHECK=warn"), "{err}");

    // Outside production it is a warning only, and with `warn` production starts too.
    let app = TestApp::spawn_with(|c| {
        c.stores.redis_url = Some(SecretString::from(redis.url.clone()));
        c.stores.redis_cluster_urls = None;
        c.stores.redis_durability_check = DurabilityCheck::Refuse;
    })
    .await;
    assert_eq!(app.get_json::<serde_json::Value>("/readyz").await["redis"], "ok");
    drop(app);
    let app = TestApp::spawn_with(|c| {
        production(c, &redis);
        c.stores.redis_durability_check = DurabilityCheck::Warn;
    })
    .await;
    assert_eq!(app.get_json::<serde_json::Value>("/readyz").await["redis"], "ok");
}

/// With the AOF on and no eviction, production starts and serves.
#[tokio::test]
async fn production_starts_on_a_durable_redis() {
    crate::real_stores_only!("the durability check of a real Redis server (private redis-server)");
    let redis = PrivateRedis::start(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
    ]);
    let app = TestApp::spawn_with(|c| production(c, &redis)).await;
    let r = app.request_code(PHONE).await;
    assert!(r["errors"].is_null(), "{r}");
}

/// A Redis Cluster node (even one without slots) behind REDIS_URL is refused in every profile, with
/// the reason and the setting to use instead.
#[tokio::test]
async fn a_redis_cluster_is_refused() {
    crate::real_stores_only!("refusing a Redis Cluster (private redis-server)");
    let redis = PrivateRedis::start(&["--appendonly", "yes", "--cluster-enabled", "yes"]);
    let mut config = test_config();
    config.stores.redis_url = Some(SecretString::from(redis.url.clone()));
    config.stores.redis_cluster_urls = None;
    config.stores.database_url = Some(SecretString::from(format!(
        "{}/phone_auth_never_created",
        server_url()
    )));
    let err = start_error(&config).await;
    assert!(err.contains("REDIS_URL points at a Redis Cluster node"), "{err}");
    assert!(err.contains("REDIS_CLUSTER_URLS"), "{err}");
    assert!(err.contains("cluster_enabled:1"), "{err}");
}
