use std::sync::Arc;

use serde_json::json;

use crate::helpers::*;

/// Registration needs a token from verifyUser: a code merely existing is not enough.
#[tokio::test]
async fn register_requires_a_verified_phone() {
    let app = TestApp::spawn().await;
    app.generate_code(PHONE).await;
    for token in ["", "garbage", &"x".repeat(10_000)] {
        assert_code(&app.register(token, PASSWORD).await, "INVALID_TOKEN");
    }
    let n = app.phones().await.len();
    assert_eq!(n, 0);
}

/// A registration token is single use.
#[tokio::test]
async fn registration_token_is_single_use() {
    let app = TestApp::spawn().await;
    let token = app.registration_token(PHONE).await;
    assert!(app.register(&token, PASSWORD).await["errors"].is_null());
    assert_code(&app.register(&token, PASSWORD).await, "INVALID_TOKEN");
}

/// Password policy: 8..=128 code points, common ones refused; a refusal keeps the token usable.
#[tokio::test]
async fn password_policy() {
    let app = TestApp::spawn().await;
    let token = app.registration_token(PHONE).await;
    for (pw, reason) in [
        ("short7!", "TOO_SHORT"),
        (&"密".repeat(129) as &str, "TOO_LONG"),
        ("password123", "TOO_COMMON"),
        ("qwertyuiop", "TOO_COMMON"),
    ] {
        let r = app.register(&token, pw).await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], "password");
        assert_eq!(r["errors"][0]["extensions"]["reason"], reason, "{pw}");
    }
    assert_eq!(
        app.auth.hasher().hashes_computed(),
        0,
        "policy refusals compute no hash"
    );
    // 128 code points of a 3-byte character: long enough, not too long, not truncated.
    let long = "密".repeat(120) + "horse!!!";
    let r = app.register(&token, &long).await;
    assert!(r["errors"].is_null(), "{r}");
    let login = app.login(PHONE, &long).await;
    assert!(login["errors"].is_null(), "{login}");
    let truncated: String = long.chars().take(72).collect();
    assert_code(&app.login(PHONE, &truncated).await, "INVALID_CREDENTIALS");
}

/// NIST SP 800-63B 5.1.1.2: the password is normalised (NFKC) before the policy checks it, and sign-in
/// normalises the same way. Fullwidth `12345678` is the common `12345678`.
#[tokio::test]
async fn password_is_checked_after_normalisation() {
    let app = TestApp::spawn().await;
    let token = app.registration_token(PHONE).await;
    for (pw, reason) in [
        (
            "\u{ff11}\u{ff12}\u{ff13}\u{ff14}\u{ff15}\u{ff16}\u{ff17}\u{ff18}",
            "TOO_COMMON",
        ),
        ("a\u{301}e\u{301}i\u{301}o\u{301}", "TOO_SHORT"),
    ] {
        let r = app.register(&token, pw).await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], "password");
        assert_eq!(r["errors"][0]["extensions"]["reason"], reason, "{pw}");
    }
    let n = app.phones().await.len();
    assert_eq!(n, 0, "no account was made");
    // Typed with fullwidth letters at registration, in ASCII at sign-in: one password.
    let r = app
        .register(
            &token,
            "\u{ff56}\u{ff49}\u{ff4f}\u{ff4c}\u{ff45}\u{ff54}-anchor-1987",
        )
        .await;
    assert!(r["errors"].is_null(), "{r}");
    let login = app.login(PHONE, "violet-anchor-1987").await;
    assert!(login["errors"].is_null(), "{login}");
}

#[tokio::test]
async fn names_are_validated() {
    let app = TestApp::spawn().await;
    let token = app.registration_token(PHONE).await;
    let r = app
        .gql(
            "mutation($i: RegisterInput!) { register(input: $i) { user { firstName } } }",
            json!({ "i": { "registrationToken": token, "password": PASSWORD, "firstName": "x".repeat(101) } }),
        )
        .await;
    assert_code(&r, "BAD_USER_INPUT");
    assert_eq!(r["errors"][0]["extensions"]["field"], "firstName");
}

/// 50 registrations racing with one token: exactly one account, the rest INVALID_TOKEN, and at most
/// 3 password hashes (a token may be presented 3 times).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_racing_registrations_with_one_token() {
    let app = Arc::new(TestApp::spawn().await);
    let token = app.registration_token(PHONE).await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (app, token) = (app.clone(), token.clone());
        set.spawn(async move { app.register(&token, PASSWORD).await });
    }
    exactly_one_success(&set.join_all().await, "INVALID_TOKEN");
    assert!(
        app.auth.hasher().hashes_computed() <= 3,
        "{} hashes",
        app.auth.hasher().hashes_computed()
    );
    let n = app.phones().await.len();
    assert_eq!(n, 1);
}

/// 50 registrations racing with 50 valid tokens for one phone: the unique constraint keeps one account.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_racing_registrations_of_one_phone() {
    let app = Arc::new(
        TestApp::spawn_with(|c| {
            c.otp.otp_resend_cooldown_seconds = 0;
            c.otp.otp_max_sends_per_window = 100;
        })
        .await,
    );
    let mut tokens = Vec::new();
    for _ in 0..50 {
        tokens.push(app.registration_token(PHONE).await);
    }
    let mut set = tokio::task::JoinSet::new();
    for token in tokens {
        let app = app.clone();
        set.spawn(async move { app.register(&token, PASSWORD).await });
    }
    exactly_one_success(&set.join_all().await, "PHONE_ALREADY_REGISTERED");
    assert_eq!(app.phones().await, [PHONE]);
}

/// Exactly one of racing requests succeeded; every other one failed with `loser`.
fn exactly_one_success(results: &[serde_json::Value], loser: &str) {
    assert_eq!(
        results.iter().filter(|r| r["errors"].is_null()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .filter(|r| !r["errors"].is_null())
            .all(|r| code(r) == Some(loser)),
        "{results:?}"
    );
}
