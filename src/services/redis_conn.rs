//! The one Redis connection type every Redis store uses: a single primary through a
//! `ConnectionManager`, or a Redis Cluster through the cluster client (`REDIS_CLUSTER_URLS`). Both
//! are multiplexed and cheap to clone, so the stores keep one code path: commands and scripts go
//! through `ConnectionLike` either way. The few places that must know (where a script's keys live,
//! the budgets a cluster reserves in calls of their own, WAIT on the owner of a key) ask
//! `is_cluster`.
//!
//! The cluster client's defaults suit a cache, not this service: no response timeout, 16 retries,
//! backoff from 1.28 s (measured, tests/api/cluster.rs). It is built here with REDIS_TIMEOUT_MS as
//! its connection and response timeout and two retries, like the single-node manager, so a failed
//! node ends a request as an I/O timeout (SERVICE_UNAVAILABLE) within its bound instead of hanging.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Where the service's Redis is: one primary, or the seed nodes of a Cluster.
#[derive(Clone, Debug)]
pub enum RedisTarget {
    Single(String),
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// `REDIS_CLUSTER_URLS`: comma-separated seed nodes (any reachable subset finds the rest).
    pub fn cluster_from_list(list: &str) -> anyhow::Result<Self> {
        let urls: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        anyhow::ensure!(!urls.is_empty(), "REDIS_CLUSTER_URLS names no node");
        for url in &urls {
            anyhow::ensure!(
                url.starts_with("redis://") || url.starts_with("rediss://"),
                "REDIS_CLUSTER_URLS: every node is a redis:// or rediss:// URL"
            );
        }
        Ok(RedisTarget::Cluster(urls))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }

    /// A connection with `timeout` as its connect and response timeout and `retries` retries.
    pub async fn connect(&self, timeout: Duration, retries: u32) -> redis::RedisResult<RedisConn> {
        match self {
            RedisTarget::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(retries as usize);
                Ok(RedisConn::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            RedisTarget::Cluster(urls) => {
                let client = redis::cluster::ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    // A failover answers MOVED until the client's view of the slots is refreshed:
                    // a few more tries than on one primary, all within the response timeout,
                    // which bounds the whole call.
                    .retries(retries + 4)
                    // MOVED/ASK/TRYAGAIN are retried after at least this; the default 1.28 s would
                    // outlast the request's whole budget.
                    .min_retry_wait(50)
                    .max_retry_wait(timeout.as_millis() as u64)
                    .build()?;
                Ok(RedisConn::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

/// A multiplexed connection to a single primary or to a Cluster.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// `WAIT replicas ms` on the node that owns `key`: after a write there, returns how many replicas
    /// acknowledged it. On a cluster it is routed to the key's master, over the same multiplexed
    /// connection the write went through (a plain WAIT would fan out to every master and answer the
    /// minimum); on one primary it is a plain command.
    pub async fn wait_on_owner(&mut self, key: &str, replicas: u32, ms: u64) -> redis::RedisResult<i64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(ms);
        match self {
            RedisConn::Single(c) => wait.query_async(c).await,
            RedisConn::Cluster(c) => {
                let v = c
                    .route_command(
                        wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                            key,
                            SlotAddr::Master,
                        ))),
                    )
                    .await?;
                Ok(redis::from_redis_value(v)?)
            }
        }
    }
}

/// The `operation` label of a Redis command's latency: its kind, from a fixed list (a script, the
/// outbox's stream commands, the rest).
fn command_label(cmd: &Cmd) -> &'static str {
    let Some(redis::Arg::Simple(name)) = cmd.args_iter().next() else {
        return "other";
    };
    const KNOWN: &[(&str, &str)] = &[
        ("EVALSHA", "script"),
        ("EVAL", "script"),
        ("SCRIPT", "script_load"),
        ("XREADGROUP", "xreadgroup"),
        ("XADD", "xadd"),
        ("XACK", "xack"),
        ("XAUTOCLAIM", "xautoclaim"),
        ("XCLAIM", "xclaim"),
        ("XPENDING", "xpending"),
        ("XLEN", "xlen"),
        ("XRANGE", "xrange"),
        ("XDEL", "xdel"),
        ("WAIT", "wait"),
        ("GET", "get"),
        ("SET", "set"),
        ("DEL", "del"),
        ("INCR", "incr"),
        ("DECR", "decr"),
        ("PING", "ping"),
    ];
    KNOWN
        .iter()
        .find(|(command, _)| name.eq_ignore_ascii_case(command.as_bytes()))
        .map_or("other", |(_, label)| label)
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let call = match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        };
        // Every Redis call of every store passes here: its latency, when metrics are on.
        if !crate::ops::metrics::timing_stores() {
            return call;
        }
        Box::pin(crate::ops::metrics::timed("redis", command_label(cmd), call))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let call = match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        };
        if !crate::ops::metrics::timing_stores() {
            return call;
        }
        Box::pin(crate::ops::metrics::timed("redis", "pipeline", call))
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
