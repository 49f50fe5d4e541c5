//! The redis crate's async cluster client (`cluster-async`) against a real local Redis Cluster
//! (private_cluster.rs): what the service's Redis Cluster support (issue 16) can rely on. Each test
//! starts its own cluster on free ports; nothing here touches the shared Redis.
//!
//! - keys of one `{tag}` share a hash slot and one script may use them all; keys of two slots in one
//!   script are refused with CROSSSLOT before the script runs, even when one master owns both slots;
//! - a slot moved under a connected client (MOVED) or in the middle of a migration (ASK) is followed by
//!   the client without an error reaching the caller, scripts included;
//! - a killed master is replaced by its replica; a write acknowledged by `WAIT 1` on the slot's owner
//!   survives; what a caller sees while it happens; scripts after the promotion (NOSCRIPT).

use std::time::{Duration, Instant};

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{ErrorKind, ServerErrorKind, Value};

use crate::private_cluster::{PrivateCluster, query};

/// A key of another slot than `key`, on the master `want_same_master` says (same or another).
fn key_in_other_slot(cluster: &PrivateCluster, key: &str, want_same_master: bool) -> String {
    let (slot, owner) = (cluster.slot_of(key), cluster.master_of_key(key));
    (0..10_000)
        .map(|i| format!("{{other-{i}}}:n"))
        .find(|k| cluster.slot_of(k) != slot && (cluster.master_of_key(k) == owner) == want_same_master)
        .expect("some key in another slot")
}

const INCR_BOTH: &str = "local n = redis.call('INCR', KEYS[1]) \
    redis.call('SET', KEYS[2], n, 'PX', 60000) return n";

#[tokio::test]
async fn one_slot_script_runs_and_crossslot_is_refused() {
    let cluster = PrivateCluster::three_masters();
    let mut conn = cluster.client().get_async_connection().await.unwrap();

    // The per-phone keys of one decision, tagged with the phone: one slot, so one script.
    let fails = "{phone:+16502530000}:fails";
    let lock = "{phone:+16502530000}:lock";
    assert_eq!(cluster.slot_of(fails), cluster.slot_of(lock));
    let script = redis::Script::new(INCR_BOTH);
    for want in 1..=2 {
        let n: i64 = script.key(fails).key(lock).invoke_async(&mut conn).await.unwrap();
        assert_eq!(n, want);
    }
    // The state is on the slot's master, read over a plain connection (no cluster routing).
    let owner = cluster.master_of_key(fails);
    assert_eq!(query::<String>(owner, &["GET", lock]).unwrap(), "2");
    for node in cluster.nodes.iter().filter(|n| n.port != owner) {
        assert_eq!(
            query::<i64>(node.port, &["DBSIZE"]).unwrap(),
            0,
            "keys only on the slot's master"
        );
    }

    // Two slots in one script: refused by the server before the script runs, whether the second
    // slot is on another master or on the same one (CROSSSLOT is about slots, not nodes).
    for same_master in [false, true] {
        let other = key_in_other_slot(&cluster, fails, same_master);
        let err = script
            .key(fails)
            .key(&other)
            .invoke_async::<i64>(&mut conn)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Server(ServerErrorKind::CrossSlot), "{err}");
        assert!(
            query::<Option<String>>(cluster.master_of_key(&other), &["GET", &other])
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(
        query::<String>(owner, &["GET", fails]).unwrap(),
        "2",
        "a refused script wrote nothing"
    );

    // A pipeline over two slots is refused by the client itself, before sending anything.
    let other = key_in_other_slot(&cluster, fails, false);
    let err = redis::pipe()
        .incr(fails, 1)
        .incr(&other, 1)
        .query_async::<Vec<i64>>(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server(ServerErrorKind::CrossSlot), "{err}");
    assert_eq!(query::<String>(owner, &["GET", fails]).unwrap(), "2");
}

/// The id of the node on `port`, as the cluster knows it.
fn node_id(cluster: &PrivateCluster, port: u16) -> String {
    cluster
        .nodes_view()
        .into_iter()
        .find(|n| n.port == port)
        .expect("a known node")
        .id
}

#[tokio::test]
async fn moved_and_ask_are_followed_by_the_client() {
    let cluster = PrivateCluster::three_masters();
    let mut conn = cluster.client().get_async_connection().await.unwrap();
    let incr = redis::Script::new("return redis.call('INCR', KEYS[1])");

    let (k1, k2) = ("{moving}:a", "{moving}:b");
    let slot = cluster.slot_of(k1);
    let src = cluster.master_of_slot(slot);
    let dst = cluster.nodes.iter().map(|n| n.port).find(|&p| p != src).unwrap();
    let (src_id, dst_id) = (node_id(&cluster, src), node_id(&cluster, dst));
    // The client learns the slot map and loads the script (SCRIPT LOAD goes to every node).
    let n: i64 = incr.key(k1).invoke_async(&mut conn).await.unwrap();
    assert_eq!(n, 1);

    // Mid-migration: a key still on the source is served there; a key the source does not have is
    // answered with ASK, and the client re-sends it (ASKING + EVALSHA) to the importing node.
    let slot_s = slot.to_string();
    query::<()>(dst, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &src_id]).unwrap();
    query::<()>(src, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &dst_id]).unwrap();
    let n: i64 = incr.key(k1).invoke_async(&mut conn).await.unwrap();
    assert_eq!(n, 2, "k1 is still on the source");
    let n: i64 = incr.key(k2).invoke_async(&mut conn).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        query::<i64>(dst, &["CLUSTER", "COUNTKEYSINSLOT", &slot_s]).unwrap(),
        1,
        "k2 went to the importing node"
    );
    assert_eq!(
        query::<i64>(src, &["CLUSTER", "COUNTKEYSINSLOT", &slot_s]).unwrap(),
        1
    );

    // A script whose keys are split between the two nodes cannot run on either: the source answers
    // TRYAGAIN, which the client retries after a sleep (at least min_retry_wait, 1.28 s by default)
    // until the migration ends; a bounded client gives up at its response timeout with a timeout.
    let both = redis::Script::new("return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])");
    // Loaded first (on every master) through keys of a slot that is not moving.
    let _: i64 = both
        .key("{preload}:c")
        .key("{preload}:d")
        .invoke_async(&mut conn)
        .await
        .unwrap();
    let bounded = redis::cluster::ClusterClientBuilder::new(cluster.urls())
        .response_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let mut bounded = bounded.get_async_connection().await.unwrap();
    let started = Instant::now();
    let err = both
        .key(k1)
        .key("{moving}:absent")
        .invoke_async::<i64>(&mut bounded)
        .await
        .unwrap_err();
    eprintln!(
        "split keys during a migration: {:?} after {:?}: {err}",
        err.kind(),
        started.elapsed()
    );
    assert!(err.is_timeout(), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    let raw: redis::RedisResult<i64> = redis::cmd("EVAL")
        .arg("return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])")
        .arg(2)
        .arg(k1)
        .arg("{moving}:absent")
        .query(
            &mut redis::Client::open(format!("redis://127.0.0.1:{src}"))
                .unwrap()
                .get_connection()
                .unwrap(),
        );
    let raw = raw.unwrap_err();
    assert_eq!(raw.kind(), ErrorKind::Server(ServerErrorKind::TryAgain), "{raw}");

    // Finish the migration; the client's slot map still names the source, which answers MOVED.
    let dst_s = dst.to_string();
    query::<()>(
        src,
        &["MIGRATE", "127.0.0.1", &dst_s, "", "0", "5000", "KEYS", k1],
    )
    .unwrap();
    for node in &cluster.nodes {
        query::<()>(node.port, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &dst_id]).unwrap();
    }
    let started = Instant::now();
    let n: i64 = incr.key(k1).invoke_async(&mut conn).await.unwrap();
    assert_eq!(n, 3, "the script followed MOVED to the new owner");
    let v: i64 = redis::cmd("GET").arg(k2).query_async(&mut conn).await.unwrap();
    assert_eq!(v, 1);
    eprintln!("MOVED followed in {:?}", started.elapsed());
    assert_eq!(
        query::<i64>(dst, &["CLUSTER", "COUNTKEYSINSLOT", &slot_s]).unwrap(),
        2
    );
    assert_eq!(
        query::<i64>(src, &["CLUSTER", "COUNTKEYSINSLOT", &slot_s]).unwrap(),
        0
    );
}

/// `WAIT numreplicas timeout` on the master that owns `key`. Sent as a plain command the client
/// fans WAIT out to every master and answers the minimum; routed here, it goes over the same
/// multiplexed connection to that node as the write before it, which is the one WAIT must follow.
async fn wait_on_owner(
    conn: &mut ClusterConnection,
    key: &str,
    replicas: i64,
    ms: i64,
) -> redis::RedisResult<Value> {
    let mut wait = redis::cmd("WAIT");
    wait.arg(replicas).arg(ms);
    conn.route_command(
        wait,
        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
            key,
            SlotAddr::Master,
        ))),
    )
    .await
}

/// What one request saw while a master was failed over: when it was sent (after the kill), how long it
/// took, and its error kind if it failed.
#[derive(Debug)]
struct Seen {
    sent_after: Duration,
    took: Duration,
    error: Option<ErrorKind>,
    /// The error was the client's response timeout (`RedisError::is_timeout`).
    timeout: bool,
}

/// Sends `GET key` every 100 ms for `for_how_long`, each as its own task so that one slow request
/// does not hold back the next; every request is bounded by 30 s.
async fn probe(conn: &ClusterConnection, key: &str, since: Instant, for_how_long: Duration) -> Vec<Seen> {
    let mut tasks = Vec::new();
    while since.elapsed() < for_how_long {
        let mut conn = conn.clone();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            let sent_after = since.elapsed();
            let started = Instant::now();
            let res = tokio::time::timeout(
                Duration::from_secs(30),
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut conn),
            )
            .await;
            let (error, timeout) = match res {
                Ok(Ok(_)) => (None, false),
                Ok(Err(e)) => (Some(e.kind()), e.is_timeout()),
                // Shown as an Io kind: the test's own bound, not the client's.
                Err(_) => (Some(ErrorKind::Io), false),
            };
            Seen {
                sent_after,
                took: started.elapsed(),
                error,
                timeout,
            }
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    seen
}

fn summarize(label: &str, seen: &[Seen]) {
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.error.is_some()).collect();
    let slowest = seen.iter().map(|s| s.took).max().unwrap_or_default();
    let first_ok_after = seen
        .iter()
        .find(|s| s.error.is_none())
        .map(|s| s.sent_after + s.took);
    eprintln!(
        "{label}: {} requests, {} failed, slowest {:?}, first success completed {:?} after the kill",
        seen.len(),
        failed.len(),
        slowest,
        first_ok_after
    );
    for s in &failed {
        eprintln!(
            "  {label}: sent +{:?} took {:?} error {:?}{}",
            s.sent_after,
            s.took,
            s.error,
            if s.timeout { " (timeout)" } else { "" }
        );
    }
}

/// How long the failover test keeps sending requests after the kill: the failover takes about 2.5 s
/// here; the rest leaves requests sent well after it, which must all succeed, even on a loaded machine.
const PROBE_FOR: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_failed_over_to_its_replica() {
    let mut cluster = PrivateCluster::three_masters_three_replicas();
    let lock = "{phone:+16502530000}:lock";
    let slot = cluster.slot_of(lock);
    let owner = cluster.master_of_slot(slot);
    let replicas = cluster.replicas_of(owner);
    assert_eq!(replicas.len(), 1, "one replica per master");

    // The crate's defaults (no response timeout, 16 retries, 1.28 s minimum back-off) and a client
    // bounded as the service bounds its Redis calls.
    let mut default_conn = cluster.client().get_async_connection().await.unwrap();
    let bounded = redis::cluster::ClusterClientBuilder::new(cluster.urls())
        .connection_timeout(Duration::from_millis(250))
        .response_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let bounded_conn = bounded.get_async_connection().await.unwrap();

    // A script loaded through the cluster client (Script::invoke_async: EVALSHA, NOSCRIPT, SCRIPT LOAD,
    // EVALSHA) is loaded on the masters only: the client routes SCRIPT LOAD to every node it is
    // connected to, and without read_from_replicas it connects to masters only. Redis does not
    // replicate a loaded script either (it replicates a script's effects).
    let script = redis::Script::new("return redis.call('EXISTS', KEYS[1])");
    let n: i64 = script.key(lock).invoke_async(&mut default_conn).await.unwrap();
    assert_eq!(n, 0);
    let exists =
        |port: u16| query::<Vec<i64>>(port, &["SCRIPT", "EXISTS", script.get_hash()]).unwrap()[0] == 1;
    let view = cluster.nodes_view();
    for node in &cluster.nodes {
        let master = view.iter().any(|v| v.port == node.port && v.is_master());
        assert_eq!(
            exists(node.port),
            master,
            "node {}: loaded on masters, not on replicas",
            node.port
        );
    }

    // The lock is written and acknowledged by one replica before the master dies.
    let _: () = redis::cmd("SET")
        .arg(lock)
        .arg("locked")
        .arg("PX")
        .arg(600_000)
        .query_async(&mut default_conn)
        .await
        .unwrap();
    let acked = wait_on_owner(&mut default_conn, lock, 1, 1000).await.unwrap();
    assert_eq!(acked, Value::Int(1), "one replica acknowledged the lock");

    let killed_at = Instant::now();
    cluster.kill(owner);
    // A key of another master's slot: with cluster-require-full-coverage (the default), the whole
    // cluster refuses commands (CLUSTERDOWN) from the moment the dead master is marked failed until
    // its replica takes over.
    let elsewhere = (0..10_000)
        .map(|i| format!("{{elsewhere-{i}}}:n"))
        .find(|k| cluster.master_of_key(k) != owner)
        .unwrap();
    let probes = {
        let (d, b, e) = (default_conn.clone(), bounded_conn.clone(), elsewhere.clone());
        tokio::spawn(async move {
            tokio::join!(
                probe(&d, lock, killed_at, PROBE_FOR),
                probe(&b, lock, killed_at, PROBE_FOR),
                probe(&b, &e, killed_at, PROBE_FOR)
            )
        })
    };
    let promoted = tokio::task::block_in_place(|| {
        cluster.wait_promoted(owner, slot, killed_at, Duration::from_secs(30))
    });
    let (new_master, took) = promoted.expect("the replica was promoted");
    eprintln!("failover: master {owner} killed, replica {new_master} serving slot {slot} after {took:?}");
    assert_eq!(new_master, replicas[0]);
    let (seen_default, seen_bounded, seen_elsewhere) = probes.await.unwrap();
    summarize("default client", &seen_default);
    summarize("bounded client", &seen_bounded);
    summarize("bounded client, another master's slot", &seen_elsewhere);
    // The bound holds during the failover: no request of the bounded client took much longer than its
    // response timeout, whatever it met (a dead node, CLUSTERDOWN, a stale slot map).
    for s in seen_bounded.iter().chain(&seen_elsewhere) {
        assert!(s.took < Duration::from_millis(1500), "{s:?}");
    }

    // After the promotion both clients answer again, and the acknowledged lock survived.
    for mut conn in [default_conn.clone(), bounded_conn.clone()] {
        let v: Option<String> = redis::cmd("GET").arg(lock).query_async(&mut conn).await.unwrap();
        assert_eq!(v.as_deref(), Some("locked"));
    }
    // Requests sent well after the promotion did not fail.
    for seen in [&seen_default, &seen_bounded, &seen_elsewhere] {
        let late = seen
            .iter()
            .filter(|s| s.sent_after > took + Duration::from_secs(2));
        assert!(
            late.clone().count() > 0 && late.clone().all(|s| s.error.is_none()),
            "{seen:?}"
        );
    }

    // So the promoted replica lacks the script: EVALSHA alone is NOSCRIPT (not retried by the client),
    // and Script::invoke_async answers it by loading the script and sending it again.
    assert!(!exists(new_master));
    let err = redis::cmd("EVALSHA")
        .arg(script.get_hash())
        .arg(1)
        .arg(lock)
        .query_async::<i64>(&mut default_conn)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server(ServerErrorKind::NoScript), "{err}");
    let n: i64 = script.key(lock).invoke_async(&mut default_conn).await.unwrap();
    assert_eq!(n, 1);
    assert!(exists(new_master));
}

/// `scripts/redis-cluster` (for CI and benchmarks) starts a cluster the cluster client can use, and
/// `stop` ends every node it started and removes its directory.
#[tokio::test]
async fn the_cluster_script_starts_and_stops_a_cluster() {
    let dir = std::env::temp_dir().join(format!("phone-auth-rc-{}", uuid::Uuid::new_v4().simple()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-cluster");
    // Stops the cluster also when an assertion fails.
    struct Stop<'a>(&'a str, &'a std::path::Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new(self.0)
                .arg("stop")
                .arg(self.1)
                .output();
        }
    }
    let out = std::process::Command::new(script)
        .arg("start")
        .arg(&dir)
        .args(["--node-timeout", "1000"])
        .output()
        .unwrap();
    let stop = Stop(script, &dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    let urls: Vec<String> = line
        .trim()
        .strip_prefix("REDIS_CLUSTER_URLS=")
        .expect("the URLs line")
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(urls.len(), 3);
    assert_eq!(std::fs::read_to_string(dir.join("env")).unwrap(), line);

    let client = redis::cluster::ClusterClient::new(urls.clone()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    for i in 0..30 {
        let key = format!("{{k{i}}}");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // The keys are spread over the three masters.
    let ports: Vec<u16> = urls
        .iter()
        .map(|u| u.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    let sizes: Vec<i64> = ports
        .iter()
        .map(|&p| query::<i64>(p, &["DBSIZE"]).unwrap())
        .collect();
    assert_eq!(sizes.iter().sum::<i64>(), 30);
    assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");

    drop(conn);
    drop(stop);
    assert!(!dir.exists());
    for port in ports {
        assert!(
            query::<String>(port, &["PING"]).is_err(),
            "node {port} still answers"
        );
    }
}
