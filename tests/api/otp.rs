use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::*;

/// The code is stored only as an HMAC, never in clear, and every key has a TTL.
#[tokio::test]
async fn code_is_stored_hashed_with_ttls() {
    let app = TestApp::spawn().await;
    app.generate_code(PHONE).await;
    let code = app.last_code(PHONE);
    let stored = app.redis_get_hash(&format!("{{{PHONE}}}:otp")).await;
    let h = stored.get("h").expect("hmac field");
    assert_eq!(h.len(), 64, "HMAC-SHA256 in hex");
    assert!(!h.contains(&code));
    assert_eq!(stored.get("tries").map(String::as_str), Some("0"));
    let keys = app.keys_with_ttl().await;
    assert!(!keys.is_empty());
    for (key, ttl) in &keys {
        assert!(*ttl > 0, "{key} has no TTL ({ttl})");
        let per_phone = key.contains(":otp");
        assert!(
            !per_phone || key.starts_with(&app.key(&format!("{{{PHONE}}}:"))),
            "{key}: every key of a phone is in its hash tag"
        );
    }
    let otp_ttl = keys.iter().find(|(k, _)| k.ends_with(":otp")).expect("otp key").1;
    assert!((295..=300).contains(&otp_ttl), "code lifetime {otp_ttl}");
    // Nothing anywhere in Redis holds the code in clear (DUMP: Redis only).
    crate::real_stores_only!("DUMPs every Redis key");
    for (key, _) in &keys {
        let dump: redis::Value = redis::cmd("DUMP")
            .arg(key)
            .query_async(&mut app.redis().clone())
            .await
            .expect("dump");
        assert!(!format!("{dump:?}").contains(&code), "{key} holds the code");
    }
}

/// Wrong, expired, used and none pending: one identical answer.
#[tokio::test]
async fn invalid_code_is_one_answer_for_four_cases() {
    let app = TestApp::spawn_with(|c| {
        c.otp.otp_ttl_seconds = 1;
        c.otp.otp_resend_cooldown_seconds = 0;
    })
    .await;
    let none = app.verify(PHONE, "123456").await;

    app.generate_code(PHONE).await;
    let code = app.last_code(PHONE);
    let wrong_code = if code == "000000" { "000001" } else { "000000" };
    let wrong = app.verify(PHONE, wrong_code).await;

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = app.verify(PHONE, &code).await;

    app.generate_code(PHONE).await;
    let code = app.last_code(PHONE);
    assert!(app.verify(PHONE, &code).await["errors"].is_null());
    let used = app.verify(PHONE, &code).await;

    for v in [&wrong, &expired, &used] {
        assert_eq!(v, &none, "identical answers");
    }
    assert_code(&none, "INVALID_CODE");
}

/// The 5th wrong try burns the code; the right code is then refused too.
#[tokio::test]
async fn five_wrong_tries_burn_the_code() {
    let app = TestApp::spawn().await;
    app.generate_code(PHONE).await;
    let code = app.last_code(PHONE);
    let wrong: Vec<String> = (0..5)
        .map(|i| format!("{:06}", (code.parse::<u32>().unwrap() + 1 + i) % 1_000_000))
        .collect();
    for w in &wrong[..4] {
        assert_code(&app.verify(PHONE, w).await, "INVALID_CODE");
    }
    assert_code(&app.verify(PHONE, &wrong[4]).await, "TOO_MANY_ATTEMPTS");
    assert_code(&app.verify(PHONE, &code).await, "INVALID_CODE");
}

/// 60 s between codes, 5 per hour, with retryAfterSeconds.
#[tokio::test]
async fn resend_cooldown_and_hourly_budget() {
    let app = TestApp::spawn().await;
    assert!(app.generate_code(PHONE).await["errors"].is_null());
    let again = app.generate_code(PHONE).await;
    assert_code(&again, "RATE_LIMITED");
    let retry = again["errors"][0]["extensions"]["retryAfterSeconds"]
        .as_u64()
        .expect("retryAfterSeconds");
    assert!((55..=60).contains(&retry), "{retry}");
    assert_eq!(app.sms.count(PHONE), 1, "a refused request sends nothing");

    let app = TestApp::spawn_with(|c| c.otp.otp_resend_cooldown_seconds = 0).await;
    for _ in 0..5 {
        assert!(app.generate_code(PHONE).await["errors"].is_null());
    }
    let sixth = app.generate_code(PHONE).await;
    assert_code(&sixth, "RATE_LIMITED");
    let retry = sixth["errors"][0]["extensions"]["retryAfterSeconds"]
        .as_u64()
        .expect("retryAfterSeconds");
    assert!((3590..=3600).contains(&retry), "{retry}");
    assert_eq!(app.sms.count(PHONE), 5);
}

/// The cooldown, read from the newest send rather than kept in a key of its own, ends on time; the
/// phone then holds two keys (its code and its sends). A cooldown longer than the window it is read
/// from is refused at start-up.
#[tokio::test]
async fn the_cooldown_ends_on_time_and_fits_its_window() {
    let app = TestApp::spawn_with(|c| c.otp.otp_resend_cooldown_seconds = 1).await;
    assert!(app.generate_code(PHONE).await["errors"].is_null());
    let again = app.generate_code(PHONE).await;
    assert_code(&again, "RATE_LIMITED");
    assert_eq!(again["errors"][0]["extensions"]["retryAfterSeconds"], 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(app.generate_code(PHONE).await["errors"].is_null());
    assert_eq!(app.sms.count(PHONE), 2);
    let mut per_phone: Vec<String> = app
        .keys_with_ttl()
        .await
        .into_iter()
        .filter_map(|(k, _)| {
            k.split_once(&app.key(&format!("{{{PHONE}}}:")))
                .map(|(_, what)| what.to_owned())
        })
        .collect();
    per_phone.sort();
    assert_eq!(per_phone, ["otp", "otp_sends"]);

    let mut config = crate::helpers::test_config();
    config.otp.otp_window_seconds = 3600;
    config.otp.otp_resend_cooldown_seconds = 3601;
    let sender = std::sync::Arc::new(phone_auth::services::sms::TestSender::default());
    let Err(refused) = phone_auth::app::build(&config, Some(sender)).await else {
        panic!("started with a cooldown longer than its window");
    };
    assert!(
        refused.to_string().contains("OTP_RESEND_COOLDOWN_SECONDS"),
        "{refused}"
    );
}

/// A new code does not reset the phone's failure count: 10 failed checks per hour over any codes.
#[tokio::test]
async fn failures_count_across_codes() {
    let app = TestApp::spawn_with(|c| {
        c.otp.otp_resend_cooldown_seconds = 0;
        c.otp.otp_max_sends_per_window = 100;
    })
    .await;
    let mut failures = 0;
    while failures < 10 {
        app.generate_code(PHONE).await;
        let code: u32 = app.last_code(PHONE).parse().unwrap();
        for i in 1..=3 {
            if failures == 10 {
                break;
            }
            assert_code(
                &app.verify(PHONE, &format!("{:06}", (code + i) % 1_000_000)).await,
                "INVALID_CODE",
            );
            failures += 1;
        }
    }
    app.generate_code(PHONE).await;
    let right = app.last_code(PHONE);
    let r = app.verify(PHONE, &right).await;
    assert_code(&r, "RATE_LIMITED");
    assert!(
        r["errors"][0]["extensions"]["retryAfterSeconds"]
            .as_u64()
            .unwrap()
            > 3000
    );
}

/// Check-and-consume is one atomic step: of 20 parallel correct submissions exactly one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_parallel_correct_codes_succeed_once() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    app.generate_code(PHONE).await;
    let code = app.last_code(PHONE);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (app, code) = (app.clone(), code.clone());
        set.spawn(async move { app.verify(PHONE, &code).await });
    }
    let results = set.join_all().await;
    let ok = results.iter().filter(|r| r["errors"].is_null()).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|r| !r["errors"].is_null())
            .all(|r| code_of(r) == "INVALID_CODE")
    );
}

fn code_of(v: &serde_json::Value) -> &str {
    v["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}

/// Codes go out through the sender only, and differ between requests.
#[tokio::test]
async fn codes_are_fresh_six_digits() {
    let app = TestApp::spawn_with(|c| {
        c.otp.otp_resend_cooldown_seconds = 0;
        c.otp.otp_max_sends_per_window = 100;
    })
    .await;
    let mut seen = HashSet::new();
    for _ in 0..20 {
        app.generate_code(PHONE).await;
        let c = app.last_code(PHONE);
        assert!(c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()));
        seen.insert(c);
    }
    assert!(seen.len() >= 18, "20 draws from 10^6 repeat rarely: {seen:?}");
    let body = &app.sms.bodies(PHONE)[0];
    assert!(body.contains("code is"), "{body}");
}

/// Configured test numbers get their fixed code and no SMS; production refuses them unless allowed.
#[tokio::test]
async fn test_numbers_have_a_fixed_code_and_send_nothing() {
    let app = TestApp::spawn_with(|c| {
        c.sms.sms_test_numbers = "+16502530999:424242, +1650254*:135790".into();
        c.sms.sms_max_per_hour = 1;
    })
    .await;
    for (phone, code) in [
        ("+16502530999", "424242"),
        ("+16502541234", "135790"),
        ("+16502549876", "135790"),
    ] {
        assert!(app.generate_code(phone).await["errors"].is_null());
        assert_eq!(app.sms.count(phone), 0, "a test number is sent nothing");
        let v = app.verify(phone, code).await;
        assert_eq!(v["data"]["verifyUser"]["registered"], false, "{v}");
    }
    // They spent none of the service-wide SMS budget (1 here): a real number still gets its SMS.
    assert!(app.generate_code(PHONE).await["errors"].is_null());
    assert_eq!(app.sms.count(PHONE), 1);

    let mut config = crate::helpers::test_config();
    config.app_env = phone_auth::config::AppEnv::Production;
    config.tokens.jwt_issuer = Some("https://auth.example.com".into());
    config.tokens.jwt_signing_keys = Some(
        phone_auth::services::tokens::SigningKey::generate()
            .unwrap()
            .to_config()
            .into(),
    );
    config.sms.sms_test_numbers = "+16502530999:424242".into();
    let sender = std::sync::Arc::new(phone_auth::services::sms::TestSender::default());
    let Err(refused) = phone_auth::app::build(&config, Some(sender)).await else {
        panic!("production started with test numbers");
    };
    assert!(refused.to_string().contains("SMS_TEST_NUMBERS"), "{refused}");
}

/// The per-phone failure budget slides: no burst at a window's edge gets past it (a fixed window
/// would allow twice the budget within moments around its reset).
#[tokio::test]
async fn failure_budget_is_a_sliding_window() {
    let app = TestApp::spawn_with(|c| {
        c.otp.otp_window_seconds = 2;
        c.otp.otp_max_failures_per_window = 3;
        c.otp.otp_max_sends_per_window = 100;
        c.otp.otp_resend_cooldown_seconds = 0;
    })
    .await;
    let wrong = |code: &str| format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    app.generate_code(PHONE).await;
    let c = app.last_code(PHONE);
    assert_code(&app.verify(PHONE, &wrong(&c)).await, "INVALID_CODE");
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    assert_code(&app.verify(PHONE, &wrong(&c)).await, "INVALID_CODE");
    assert_code(&app.verify(PHONE, &wrong(&c)).await, "INVALID_CODE");
    // 2.1 s after the first failure: it has left the window, the two recent ones have not.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_code(&app.verify(PHONE, &wrong(&c)).await, "INVALID_CODE");
    let r = app.verify(PHONE, &wrong(&c)).await;
    assert_code(&r, "RATE_LIMITED");
    let retry = r["errors"][0]["extensions"]["retryAfterSeconds"]
        .as_u64()
        .unwrap();
    assert!(retry <= 2, "{retry}");
}
