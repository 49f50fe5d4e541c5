//! `--redis-cluster`: the service on a local 3-master Redis Cluster (scripts/redis-cluster, on free
//! ports, started and stopped by this phase), against the single Redis of the same run: verify-wrong,
//! generate-code and login with 16 outbox shards (phones spread over the masters), then the SMS outbox
//! drain rate with 1 and with 4 shards. The cluster's nodes run on the same 2 cores as everything
//! else, so the ratios say what the cluster costs per request here, not what more machines buy
//! (README "Scaling out" and docs/BENCHMARKS.md work that out on paper).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use phone_auth::services::Keys;
use phone_auth::services::redis_conn::{RedisConn, RedisTarget};

use crate::bodies::seeded_phones;
use crate::run::Bench;
use crate::scenarios::{accounts, codes};
use crate::servers::{Server, start_server, stop_server};

/// A cluster started by `scripts/redis-cluster`, stopped on drop.
struct LocalCluster {
    dir: std::path::PathBuf,
    urls: String,
}

impl LocalCluster {
    fn start(bench: &Bench) -> anyhow::Result<LocalCluster> {
        let dir = bench.work_dir.join(format!("cluster-{}", bench.run_id));
        let out = Command::new("scripts/redis-cluster")
            .arg("start")
            .arg(&dir)
            .output()
            .context("scripts/redis-cluster (run loadgen from the repository root)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "scripts/redis-cluster start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let urls = text
            .lines()
            .find_map(|l| l.strip_prefix("REDIS_CLUSTER_URLS="))
            .context("scripts/redis-cluster printed no REDIS_CLUSTER_URLS")?
            .to_owned();
        Ok(LocalCluster { dir, urls })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = Command::new("scripts/redis-cluster")
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

pub async fn cluster_phase(bench: &mut Bench) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(bench)?;
    bench.note(
        "servers",
        "redis-cluster: 3 masters, no replicas, on this machine (scripts/redis-cluster)",
    );
    let conn = RedisTarget::cluster_from_list(&cluster.urls)?
        .connect(Duration::from_secs(10), 2)
        .await?;
    let env = |shards: u32| {
        vec![
            ("REDIS_CLUSTER_URLS", cluster.urls.clone()),
            ("SMS_OUTBOX_SHARDS", shards.to_string()),
        ]
    };

    let server = start_server(bench, "cluster", &env(16)).await?;
    let result = async {
        if bench.wants("verify-wrong") {
            codes::verify_wrong_as(bench, &server, "verify-wrong (cluster)").await?;
        }
        if bench.wants("generate-code") {
            codes::generate_code_as(bench, &server, "generate-code (cluster)").await?;
        }
        if bench.wants("login") {
            // The users the main phase seeded in the same database.
            let users = Arc::new(seeded_phones(bench.args.users_small, 0, 1));
            let clients = bench.args.clients;
            accounts::login_scenario(bench, &server, "login (cluster)", users, clients, &[]).await?;
        }
        anyhow::Ok(())
    }
    .await;
    stop_server(bench, server).await;
    result?;

    if bench.wants("generate-code") {
        for shards in [1, 4] {
            // A backlog first, with no worker (generate-code alone: the workers keep up with it),
            // then a server on the same prefix whose workers drain it.
            let name = format!("cluster-{shards}-shards");
            let mut filling = env(shards);
            filling.push(("SMS_WORKERS", "0".into()));
            let server = start_server(bench, &name, &filling).await?;
            let result = codes::generate_code_as(bench, &server, &format!("generate-code ({name})")).await;
            stop_server(bench, server).await;
            result?;
            let server = start_server(bench, &name, &env(shards)).await?;
            let result = drain(bench, &server, &conn, shards).await;
            stop_server(bench, server).await;
            result?;
        }
    }
    drop(cluster);
    Ok(())
}

/// Jobs left in every shard of the server's outbox.
async fn depth(conn: &RedisConn, keys: &Keys) -> u64 {
    let mut total = 0;
    for shard in 0..keys.shards() {
        let len: u64 = redis::cmd("XLEN")
            .arg(keys.shard(shard, "sms:outbox"))
            .query_async(&mut conn.clone())
            .await
            .unwrap_or(0);
        total += len;
    }
    total
}

/// How fast the server's workers (the default 2) drain the backlog generate-code left, with no load,
/// from the moment the server is ready (what they took before that is not counted).
async fn drain(bench: &mut Bench, server: &Server, conn: &RedisConn, shards: u32) -> anyhow::Result<()> {
    let keys = Keys::with_layout(server.prefix.as_str(), shards, true);
    let len = depth(conn, &keys).await;
    let start = Instant::now();
    let mut left = len;
    while left > 0 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = depth(conn, &keys).await;
    }
    let secs = start.elapsed().as_secs_f64();
    if len > 0 {
        bench.note(
            "sms-outbox",
            format!(
                "cluster, {shards} shard(s): {len} jobs waiting when the workers' server was ready; {} delivered in {secs:.1} s with no load = {:.0} jobs/s ({left} left)",
                len - left,
                (len - left) as f64 / secs
            ),
        );
    }
    Ok(())
}
