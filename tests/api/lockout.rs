use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;

fn retry_after(v: &serde_json::Value) -> u64 {
    v["errors"][0]["extensions"]["retryAfterSeconds"]
        .as_u64()
        .expect("retryAfterSeconds")
}

/// Three wrong passwords lock password sign-in for an hour; while locked no hash is computed, and the
/// right password is refused too.
#[tokio::test]
async fn three_wrong_passwords_lock_for_an_hour() {
    let app = TestApp::spawn().await;
    app.sign_up(PHONE, PASSWORD).await;
    assert_code(&app.login(PHONE, "wrong-password-1").await, "INVALID_CREDENTIALS");
    assert_code(&app.login(PHONE, "wrong-password-2").await, "INVALID_CREDENTIALS");
    let third = app.login(PHONE, "wrong-password-3").await;
    assert_code(&third, "ACCOUNT_LOCKED");
    let hashes = app.auth.hasher().hashes_computed();
    let locked = app.login(PHONE, PASSWORD).await;
    assert_code(&locked, "ACCOUNT_LOCKED");
    assert!((3590..=3600).contains(&retry_after(&locked)), "{locked}");
    assert_eq!(
        app.auth.hasher().hashes_computed(),
        hashes,
        "no hash while locked"
    );
    for (key, ttl) in app.keys_with_ttl().await {
        assert!(ttl > 0, "{key} without TTL");
    }
}

/// A success resets the count: the lock needs three *consecutive* failures.
#[tokio::test]
async fn success_resets_the_count() {
    let app = TestApp::spawn().await;
    app.sign_up(PHONE, PASSWORD).await;
    for _ in 0..2 {
        assert_code(&app.login(PHONE, "wrong-password").await, "INVALID_CREDENTIALS");
    }
    assert!(app.login(PHONE, PASSWORD).await["errors"].is_null());
    for _ in 0..2 {
        assert_code(&app.login(PHONE, "wrong-password").await, "INVALID_CREDENTIALS");
    }
    assert!(app.login(PHONE, PASSWORD).await["errors"].is_null());
}

/// An unknown phone and a wrong password: same body, same work (a hash against a dummy), same lock.
#[tokio::test]
async fn unknown_phone_and_wrong_password_look_the_same() {
    let app = TestApp::spawn().await;
    app.sign_up(PHONE, PASSWORD).await;
    let unknown = "+16502530001";
    let before = app.auth.hasher().hashes_computed();
    let a = app.login(PHONE, "wrong-password").await;
    let b = app.login(unknown, "wrong-password").await;
    assert_eq!(a, b);
    assert_code(&a, "INVALID_CREDENTIALS");
    assert_eq!(
        app.auth.hasher().hashes_computed() - before,
        2,
        "the unknown phone cost a hash too"
    );
    app.login(unknown, "wrong-password").await;
    let locked = app.login(unknown, "wrong-password").await;
    assert_code(&locked, "ACCOUNT_LOCKED");
}

/// 30 parallel wrong passwords: at most 3 hashes, and the phone ends locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_wrong_passwords_cannot_slip_past_the_lock() {
    let app = Arc::new(TestApp::spawn().await);
    app.sign_up(PHONE, PASSWORD).await;
    let before = app.auth.hasher().hashes_computed();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..30 {
        let app = app.clone();
        set.spawn(async move { app.login(PHONE, &format!("wrong-password-{i}")).await });
    }
    let results = set.join_all().await;
    assert!(
        app.auth.hasher().hashes_computed() - before <= 3,
        "{} hashes",
        app.auth.hasher().hashes_computed() - before
    );
    // Refused attempts are ACCOUNT_LOCKED, or RATE_LIMITED while the last allowed ones are in flight.
    assert!(
        results.iter().all(|r| matches!(
            code(r),
            Some("INVALID_CREDENTIALS" | "ACCOUNT_LOCKED" | "RATE_LIMITED")
        )),
        "{results:?}"
    );
    assert_code(&app.login(PHONE, PASSWORD).await, "ACCOUNT_LOCKED");
}

/// A sign-in by code lifts the password lock.
#[tokio::test]
async fn code_sign_in_lifts_the_lock() {
    let app = TestApp::spawn_with(|c| c.otp.otp_resend_cooldown_seconds = 0).await;
    app.sign_up(PHONE, PASSWORD).await;
    for _ in 0..3 {
        app.login(PHONE, "wrong-password").await;
    }
    assert_code(&app.login(PHONE, PASSWORD).await, "ACCOUNT_LOCKED");
    app.generate_code(PHONE).await;
    let v = app.verify(PHONE, &app.last_code(PHONE)).await;
    assert_eq!(v["data"]["verifyUser"]["registered"], true, "{v}");
    assert!(app.login(PHONE, PASSWORD).await["errors"].is_null());
}

/// The lock ends by itself after its duration.
#[tokio::test]
async fn lock_expires() {
    let app = TestApp::spawn_with(|c| c.lockout.lockout_seconds = 2).await;
    app.sign_up(PHONE, PASSWORD).await;
    for _ in 0..3 {
        app.login(PHONE, "wrong-password").await;
    }
    assert_code(&app.login(PHONE, PASSWORD).await, "ACCOUNT_LOCKED");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(app.login(PHONE, PASSWORD).await["errors"].is_null());
}

/// A full hashing queue answers SERVICE_UNAVAILABLE fast, and the refused attempts do not count
/// towards the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_hash_queue_is_service_unavailable_and_not_a_failure() {
    let app = Arc::new(
        TestApp::spawn_with(|c| {
            c.hashing.hash_concurrency = Some(1);
            c.hashing.hash_queue_timeout_ms = 1;
            c.lockout.lockout_max_failures = 100;
        })
        .await,
    );
    app.sign_up(PHONE, PASSWORD).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let app = app.clone();
        set.spawn(async move { app.login(PHONE, "wrong-password").await });
    }
    let results = set.join_all().await;
    let unavailable = results
        .iter()
        .filter(|r| code(r) == Some("SERVICE_UNAVAILABLE"))
        .count();
    assert!(unavailable > 0, "{results:?}");
    let failures = results
        .iter()
        .filter(|r| code(r) == Some("INVALID_CREDENTIALS"))
        .count();
    let counted = app.zcard(&format!("{{{PHONE}}}:pw_fails")).await;
    assert_eq!(counted as usize, failures, "only answered attempts count");
    let in_flight = app.zcard(&format!("{{{PHONE}}}:pw_inflight")).await;
    assert_eq!(in_flight, 0, "the refused attempts were released");
}

/// The per-IP password budget under concurrency, on every layout: requests refused because the phone
/// is locked do not spend the IP's budget (one primary never counts them; a cluster counts them in the
/// IP's own slot first and gives them back). 24 concurrent logins on a locked phone leave the counter
/// where it was; the IP then gets exactly the rest of its budget on another phone, and no more.
#[tokio::test]
async fn given_back_ip_budget_under_concurrency() {
    const BUDGET: u32 = 12;
    let app = Arc::new(
        TestApp::spawn_with(|c| {
            c.ip.ip_max_password_attempts = BUDGET;
        })
        .await,
    );
    let other = "+16502530999";
    app.sign_up(PHONE, PASSWORD).await;
    app.sign_up(other, PASSWORD).await;
    assert_code(&app.login(PHONE, "wrong-password-1").await, "INVALID_CREDENTIALS");
    assert_code(&app.login(PHONE, "wrong-password-2").await, "INVALID_CREDENTIALS");
    assert_code(&app.login(PHONE, "wrong-password-3").await, "ACCOUNT_LOCKED");
    let ip_key = "ip:127.0.0.1:password_attempts";
    let count = |v: Option<String>| v.map_or(0, |n| n.parse::<u32>().expect("a count"));
    let before = count(app.get_key(ip_key).await);
    assert_eq!(before, 3, "three wrong passwords counted against the IP");

    let burst: Vec<_> = (0..24)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { app.login(PHONE, &format!("wrong-password-{i}")).await })
        })
        .collect();
    for answer in burst {
        assert_code(&answer.await.unwrap(), "ACCOUNT_LOCKED");
    }
    assert_eq!(
        count(app.get_key(ip_key).await),
        before,
        "locked refusals spent none of the IP's budget"
    );

    for _ in before..BUDGET {
        let ok = app.login(other, PASSWORD).await;
        assert!(ok["errors"].is_null(), "within the IP's budget: {ok}");
    }
    assert_code(&app.login(other, PASSWORD).await, "RATE_LIMITED");
    assert_eq!(count(app.get_key(ip_key).await), BUDGET + 1);
}
