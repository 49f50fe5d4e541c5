use serde_json::json;

use crate::helpers::*;

/// The whole journey of the issue: generateCode -> verifyUser -> register -> me -> logout -> me (null)
/// -> login -> me.
#[tokio::test]
async fn sign_up_sign_out_sign_in_through_http() {
    let app = TestApp::spawn().await;

    let sent = app.generate_code("+1 (650) 253-0000").await;
    assert_eq!(
        sent["data"]["generateCode"],
        json!({ "phone": PHONE, "expiresInSeconds": 300, "resendInSeconds": 60 })
    );
    let code = app.last_code(PHONE);
    assert!(
        !sent.to_string().contains(&code),
        "the code must never be in a response"
    );

    let verified = app.verify(PHONE, &code).await;
    let v = &verified["data"]["verifyUser"];
    assert_eq!(v["phone"], PHONE);
    assert_eq!(v["registered"], false);
    assert!(v["auth"].is_null());
    assert_eq!(v["registrationTokenExpiresInSeconds"], 600);
    let token = v["registrationToken"].as_str().expect("token");
    assert!(token.len() >= 43, "registration token carries 256 bits");

    let registered = app.register(token, PASSWORD).await;
    let r = &registered["data"]["register"];
    assert_eq!(r["tokenType"], "Bearer");
    assert_eq!(r["expiresInSeconds"], 900);
    assert_eq!(r["user"]["phone"], PHONE);
    assert_eq!(r["user"]["firstName"], "Ada");
    let access = r["accessToken"].as_str().expect("access token");

    let me = app.me(Some(access)).await;
    assert_eq!(me["data"]["me"]["phone"], PHONE);
    assert_eq!(me["data"]["me"]["id"], r["user"]["id"]);
    assert_eq!(me["data"]["me"]["lastName"], "Lovelace");

    let out = app
        .gql_with(Some(access), "mutation { logout { revokedSessions } }", json!({}))
        .await;
    assert_eq!(out["data"]["logout"]["revokedSessions"], 1, "{out}");
    assert!(
        app.me(Some(access)).await["data"]["me"].is_null(),
        "logout takes effect at once"
    );

    let login = app.login("+16502530000", PASSWORD).await;
    let access2 = login["data"]["login"]["accessToken"]
        .as_str()
        .expect("login works");
    assert_eq!(app.me(Some(access2)).await["data"]["me"]["phone"], PHONE);

    // The stored account: E.164 phone, argon2id hash with the OWASP parameters, never the password.
    assert_eq!(app.phones().await, [PHONE]);
    let hash = app.stored_password_hash(PHONE).await;
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    assert!(!hash.contains(PASSWORD));
}

/// A registered phone that verifies a code is signed in (sign-in by code).
#[tokio::test]
async fn verify_user_signs_in_a_registered_phone() {
    let app = TestApp::spawn_with(|c| c.otp.otp_resend_cooldown_seconds = 0).await;
    app.sign_up(PHONE, PASSWORD).await;
    app.generate_code(PHONE).await;
    let v = app.verify(PHONE, &app.last_code(PHONE)).await;
    let v = &v["data"]["verifyUser"];
    assert_eq!(v["registered"], true);
    assert!(v["registrationToken"].is_null());
    let access = v["auth"]["accessToken"].as_str().expect("signed in");
    assert_eq!(app.me(Some(access)).await["data"]["me"]["phone"], PHONE);
}

/// generateCode must not tell strangers which phones have accounts.
#[tokio::test]
async fn generate_code_answers_the_same_for_registered_and_new_phones() {
    let app = TestApp::spawn_with(|c| c.otp.otp_resend_cooldown_seconds = 0).await;
    app.sign_up(PHONE, PASSWORD).await;
    let other = "+16502530001";
    let strip = |mut v: serde_json::Value| {
        v["data"]["generateCode"]["phone"] = json!("");
        v
    };
    let registered = strip(app.generate_code(PHONE).await);
    let new = strip(app.generate_code(other).await);
    assert!(registered["errors"].is_null(), "{registered}");
    assert_eq!(registered, new);
    assert_eq!(app.sms.count(other), 1, "a new phone gets its code too");
}

/// National numbers need a configured default region; every form of a number is one phone.
#[tokio::test]
async fn phone_forms_and_default_region() {
    let without = TestApp::spawn().await;
    let r = without.generate_code("650 253 0000").await;
    assert_code(&r, "BAD_USER_INPUT");
    assert_eq!(r["errors"][0]["extensions"]["field"], "phone");

    let app = TestApp::spawn_with(|c| c.otp.default_region = Some("US".into())).await;
    let r = app.generate_code("(650) 253-0000").await;
    assert_eq!(r["data"]["generateCode"]["phone"], PHONE);
    // Another form of the same number hits the same cooldown.
    for form in ["+1 650 253 0000", "＋１ ６５０ ２５３ ００００", "1-650-253-0000"] {
        assert_code(&app.generate_code(form).await, "RATE_LIMITED");
    }
    assert_eq!(app.sms.count(PHONE), 1);
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    let h = app.client.get(app.url("/healthz")).send().await.expect("healthz");
    assert_eq!(h.status(), 200);
    let r = app.client.get(app.url("/readyz")).send().await.expect("readyz");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.expect("json");
    // The embedded backend answers while the process does; it does not pretend to be the servers.
    let expected = if crate::helpers::embedded() {
        json!({ "store": "embedded" })
    } else {
        json!({ "postgres": "ok", "redis": "ok" })
    };
    assert_eq!(body, expected);
}
