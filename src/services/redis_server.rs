//! What the service requires of its Redis server, checked once at start. Owns no keys.
//!
//! Redis holds state whose loss is a security event, not a cache miss: password locks and failure
//! counts (NIST SP 800-63B 5.2.2 throttling), the per-phone, per-IP and service-wide budgets, pending
//! codes, registration tokens and undelivered SMS jobs. Two server settings decide whether that state
//! survives:
//! - `maxmemory-policy`: anything but `noeviction` lets Redis drop keys under memory pressure, a lock
//!   among them; `noeviction` refuses writes instead (SERVICE_UNAVAILABLE), failing closed;
//! - persistence: without the append-only file, and with no replica to fail over to, a restart loses
//!   all of it (every lock lifted, every budget reset). RDB snapshots alone lose up to their interval.
//!
//! In production a server that fails either check refuses to start, unless
//! `REDIS_DURABILITY_CHECK=warn` makes it a loud warning (a managed Redis whose durability is
//! configured where we cannot see it, say); elsewhere it is a warning. A Cluster node behind
//! REDIS_URL is refused (the single-node client would follow no MOVED: REDIS_CLUSTER_URLS is the
//! setting for a cluster), and so is a node without cluster mode behind REDIS_CLUSTER_URLS. On a
//! cluster every seed node that is a master is checked. What the server does not let us read
//! (managed Redis often refuses CONFIG; INFO may be renamed) is logged, not guessed.

use redis::aio::ConnectionLike;

use crate::services::redis_conn::{RedisConn, RedisTarget};

use crate::config::DurabilityCheck;

/// What was read from the server; None where it would not say.
#[derive(Debug, Default)]
pub struct RedisFacts {
    pub cluster_enabled: Option<bool>,
    pub aof_enabled: Option<bool>,
    pub connected_replicas: Option<u64>,
    pub maxmemory_policy: Option<String>,
    /// `master` or `slave` (INFO replication).
    pub role: Option<String>,
}

/// `field` of an INFO section's `field:value` lines.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|line| line.trim().strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

async fn info<C: ConnectionLike + Send>(conn: &mut C, section: &str) -> Option<String> {
    redis::cmd("INFO").arg(section).query_async(conn).await.ok()
}

impl RedisFacts {
    pub async fn read<C: ConnectionLike + Clone + Send>(redis: &C) -> Self {
        let mut conn = redis.clone();
        let cluster = info(&mut conn, "cluster").await;
        let persistence = info(&mut conn, "persistence").await;
        let replication = info(&mut conn, "replication").await;
        // CONFIG is often refused by managed Redis; INFO memory says the same since Redis 4.
        let policy: Option<String> = match redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async::<Vec<String>>(&mut conn)
            .await
        {
            Ok(pair) if pair.len() == 2 => Some(pair[1].clone()),
            _ => info(&mut conn, "memory")
                .await
                .and_then(|m| info_field(&m, "maxmemory_policy")),
        };
        RedisFacts {
            cluster_enabled: cluster
                .as_deref()
                .and_then(|i| info_field(i, "cluster_enabled"))
                .map(|v| v == "1"),
            aof_enabled: persistence
                .as_deref()
                .and_then(|i| info_field(i, "aof_enabled"))
                .map(|v| v == "1"),
            connected_replicas: replication
                .as_deref()
                .and_then(|i| info_field(i, "connected_slaves"))
                .and_then(|v| v.parse().ok()),
            role: replication.as_deref().and_then(|i| info_field(i, "role")),
            maxmemory_policy: policy,
        }
    }

    /// Why this server would lose the service's state (empty: it would not, as far as it says).
    pub fn durability_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.maxmemory_policy.as_deref() {
            Some("noeviction") => {}
            Some(policy) => problems.push(format!(
                "maxmemory-policy is {policy}: under memory pressure Redis would evict keys, password \
                 locks and failure counts among them (set maxmemory-policy noeviction)"
            )),
            None => {}
        }
        if self.aof_enabled == Some(false) && self.connected_replicas.unwrap_or(0) == 0 {
            problems.push(
                "persistence: appendonly is off and this node has no replica, so a restart would lift \
                 every lock and reset every budget (set appendonly yes, appendfsync everysec)"
                    .to_owned(),
            );
        }
        problems
    }

    /// What could not be read, for the log.
    pub fn unknown(&self) -> Vec<&'static str> {
        let mut unknown = Vec::new();
        if self.maxmemory_policy.is_none() {
            unknown.push("maxmemory-policy (CONFIG GET and INFO memory refused)");
        }
        if self.aof_enabled.is_none() {
            unknown.push("persistence (INFO persistence refused)");
        }
        if self.cluster_enabled.is_none() {
            unknown.push("cluster mode (INFO cluster refused)");
        }
        unknown
    }
}

/// Checks the server at start: refuses a Cluster node behind REDIS_URL (and a node without cluster
/// mode behind REDIS_CLUSTER_URLS) always, and a server that would lose the service's state in
/// production unless `check` is `Warn` (on a cluster, every seed node that is a master).
pub async fn check(
    target: &RedisTarget,
    redis: &RedisConn,
    production: bool,
    check: DurabilityCheck,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    match target {
        RedisTarget::Single(_) => {
            let facts = RedisFacts::read(redis).await;
            anyhow::ensure!(
                facts.cluster_enabled != Some(true),
                "REDIS_URL points at a Redis Cluster node (INFO cluster says cluster_enabled:1): set \
                 REDIS_CLUSTER_URLS to the cluster's nodes instead (README \"Scaling out\")"
            );
            for what in facts.unknown() {
                tracing::warn!("Redis did not let us read its {what}; its durability is unchecked");
            }
            problems = facts.durability_problems();
        }
        RedisTarget::Cluster(urls) => {
            for url in urls {
                // Each seed on a plain connection of its own: INFO through the cluster client would
                // go to any one node.
                let Ok(client) = redis::Client::open(url.as_str()) else {
                    continue;
                };
                let Ok(conn) = client.get_multiplexed_async_connection().await else {
                    tracing::warn!("a REDIS_CLUSTER_URLS node did not answer; its durability is unchecked");
                    continue;
                };
                let facts = RedisFacts::read(&conn).await;
                anyhow::ensure!(
                    facts.cluster_enabled != Some(false),
                    "a REDIS_CLUSTER_URLS node is not in cluster mode (INFO cluster says \
                     cluster_enabled:0): use REDIS_URL for a single primary"
                );
                if facts.role.as_deref() == Some("slave") {
                    continue;
                }
                for what in facts.unknown() {
                    tracing::warn!(
                        "a Redis Cluster master did not let us read its {what}; its durability is unchecked"
                    );
                }
                problems.extend(facts.durability_problems());
            }
            problems.dedup();
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let problems = problems.join("; ");
    if production && check == DurabilityCheck::Refuse {
        anyhow::bail!(
            "refusing to start with APP_ENV=production: this Redis would lose locks, failure counts, \
             budgets, pending codes, registration tokens and undelivered SMS: {problems}. See README \
             \"Redis settings\"; REDIS_DURABILITY_CHECK=warn starts anyway"
        );
    }
    tracing::warn!(
        "this Redis would lose locks, failure counts, budgets, pending codes, registration tokens and \
         undelivered SMS: {problems} (README \"Redis settings\")"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_info_fields() {
        let info = "# Persistence\r\nloading:0\r\naof_enabled:1\r\naof_rewrite_in_progress:0\r\n";
        assert_eq!(info_field(info, "aof_enabled").as_deref(), Some("1"));
        assert_eq!(info_field(info, "aof"), None);
    }

    #[test]
    fn a_replica_stands_in_for_the_aof_but_nothing_for_eviction() {
        let facts = RedisFacts {
            cluster_enabled: Some(false),
            aof_enabled: Some(false),
            connected_replicas: Some(1),
            maxmemory_policy: Some("noeviction".into()),
            role: None,
        };
        assert!(facts.durability_problems().is_empty());
        let facts = RedisFacts {
            connected_replicas: Some(0),
            maxmemory_policy: Some("volatile-lru".into()),
            ..facts
        };
        let problems = facts.durability_problems().join(" ");
        assert!(
            problems.contains("maxmemory-policy is volatile-lru"),
            "{problems}"
        );
        assert!(problems.contains("appendonly"), "{problems}");
    }
}
