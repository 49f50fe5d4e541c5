//! The service on a Redis Cluster with replicas (3 masters + 3 replicas, private, on free ports) when
//! the master that holds a locked phone is killed: during the failover every request answers
//! correctly or SERVICE_UNAVAILABLE, never a wrong answer; after it everything works; and the lock set
//! before the kill (its failure count written and then `WAIT 1` on its master) survives.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;
use crate::private_cluster::PrivateCluster;

/// How long requests keep coming after the kill: the failover takes about 2.5 s with the private
/// cluster's 1 s node timeout; the rest are requests sent after it, which must all pass.
const PROBE_FOR: Duration = Duration::from_secs(10);

fn code_of(v: &Value) -> String {
    code(v).unwrap_or("OK").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_keeps_its_lock_and_answers_service_unavailable_meanwhile() {
    crate::real_stores_only!("kills a master of a private Redis Cluster");
    crate::single_redis_only!("runs once, in the real pass, on a private cluster of its own");
    let mut cluster = PrivateCluster::three_masters_three_replicas();
    let urls = cluster.urls().join(",");
    let app = TestApp::spawn_with(|c| {
        c.stores.redis_url = None;
        c.stores.redis_cluster_urls = Some(SecretString::from(urls));
        // The service's own bound on a Redis call: a dead master ends a request within it.
        c.stores.redis_timeout_ms = 1000;
        c.sms.sms_outbox_shards = 4;
    })
    .await;
    app.sign_up(PHONE, PASSWORD).await;
    assert_code(&app.login(PHONE, "wrong-password-1").await, "INVALID_CREDENTIALS");
    assert_code(&app.login(PHONE, "wrong-password-2").await, "INVALID_CREDENTIALS");
    assert_code(&app.login(PHONE, "wrong-password-3").await, "ACCOUNT_LOCKED");

    let lock_key = app.key(&format!("{{{PHONE}}}:pw_lock"));
    let slot = cluster.slot_of(&lock_key);
    let owner = cluster.master_of_slot(slot);
    // Another phone whose shard is on another master: its requests must pass once the cluster
    // knows the master is gone.
    let other = (0..10)
        .map(|i| format!("+1650253011{i}"))
        .find(|p| cluster.master_of_key(&app.key(&format!("{{{p}}}:pw_lock"))) != owner)
        .expect("a phone on another master");
    let other = other.as_str();
    app.sign_up(other, PASSWORD).await;
    let killed_at = Instant::now();
    cluster.kill(owner);

    // Requests while the master is dead and after its replica takes over: the locked phone (right
    // password) must never get in; the other phone signs in or is told to come back.
    let mut seen: BTreeMap<(&str, String), u32> = BTreeMap::new();
    let mut last_failure_at = None;
    while killed_at.elapsed() < PROBE_FOR {
        let locked = app.login(PHONE, PASSWORD).await;
        let c = code_of(&locked);
        assert!(
            c == "ACCOUNT_LOCKED" || c == "SERVICE_UNAVAILABLE",
            "the locked phone during a failover: {locked}"
        );
        if c == "SERVICE_UNAVAILABLE" {
            last_failure_at = Some(killed_at.elapsed());
        }
        *seen.entry(("locked phone", c)).or_default() += 1;
        let free = app.login(other, PASSWORD).await;
        let c = code_of(&free);
        assert!(c == "OK" || c == "SERVICE_UNAVAILABLE", "the other phone: {free}");
        if c == "SERVICE_UNAVAILABLE" {
            last_failure_at = Some(killed_at.elapsed());
        }
        *seen.entry(("other phone", c)).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = cluster.wait_promoted(owner, slot, killed_at, Duration::from_secs(20));
    eprintln!("failover: {seen:?}; last SERVICE_UNAVAILABLE at {last_failure_at:?}; promoted {promoted:?}");
    let (new_master, _) = promoted.expect("the replica took over");
    assert_ne!(new_master, owner);
    assert!(
        seen.contains_key(&("locked phone", "SERVICE_UNAVAILABLE".into())),
        "requests to the dead master's slot during the failover answered SERVICE_UNAVAILABLE: {seen:?}"
    );
    assert!(
        last_failure_at.is_some_and(|t| t < PROBE_FOR - Duration::from_secs(2)),
        "requests after the failover pass: {last_failure_at:?}"
    );

    // After it: the lock survived, on the promoted replica; everything else works.
    let after = app.login(PHONE, PASSWORD).await;
    assert_code(&after, "ACCOUNT_LOCKED");
    assert!(app.key_exists(&format!("{{{PHONE}}}:pw_lock")).await);
    assert_eq!(app.zcard(&format!("{{{PHONE}}}:pw_fails")).await, 3);
    assert!(app.login(other, PASSWORD).await["errors"].is_null());
    app.sign_up("+16502530222", PASSWORD).await;
}
