//! The rest of an account's life: password change and reset, recent authentication, phone change,
//! devices, deletion. Each test asserts the answer and the state left behind (rows, sessions, keys).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::helpers::*;

const NEW_PASSWORD: &str = "saffron-harbour-2041";
const OTHER: &str = "+16502530011";
const NEW_PHONE: &str = "+16502530022";

const CHANGE_PASSWORD: &str = "mutation($c: String!, $n: String!) {
    changePassword(currentPassword: $c, newPassword: $n) { revokedSessions } }";
const RESET_PASSWORD: &str = "mutation($p: String!, $c: String!, $n: String!) {
    resetPassword(phone: $p, code: $c, newPassword: $n) { accessToken refreshToken user { id phone } } }";
const REQUEST_CHANGE: &str =
    "mutation($p: String!) { requestPhoneChange(newPhone: $p) { phone expiresInSeconds resendInSeconds } }";
const CONFIRM_CHANGE: &str =
    "mutation($p: String!, $c: String!) { confirmPhoneChange(newPhone: $p, code: $c) { id phone } }";
const MY_SESSIONS: &str =
    "{ mySessions { id createdAt lastUsedAt userAgent ip authTime authMethods current } }";
const REVOKE_SESSION: &str = "mutation($id: ID!) { revokeSession(id: $id) { revokedSessions } }";
const DELETE_ACCOUNT: &str = "mutation { deleteAccount { deletedUserId } }";
const REFRESH: &str = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken refreshToken } }";

fn access(payload: &Value) -> String {
    payload["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {payload}"))
        .to_owned()
}

fn claims(token: &str) -> Value {
    let seg = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
}

async fn login_token(app: &TestApp, phone: &str, password: &str) -> String {
    let r = app.login(phone, password).await;
    assert!(r["errors"].is_null(), "{r}");
    access(&r["data"]["login"])
}

async fn live_sessions(app: &TestApp) -> i64 {
    app.session_counts().await.1
}

async fn password_hash(app: &TestApp, phone: &str) -> String {
    app.stored_password_hash(phone).await
}

async fn phones(app: &TestApp) -> Vec<String> {
    app.phones().await
}

async fn key_exists(app: &TestApp, suffix: &str) -> bool {
    app.key_exists(suffix).await
}

async fn request_change(app: &TestApp, token: &str, phone: &str) -> Value {
    let r = app
        .gql_with(Some(token), REQUEST_CHANGE, json!({ "p": phone }))
        .await;
    app.wait_outbox_empty().await;
    r
}

async fn confirm_change(app: &TestApp, token: &str, phone: &str, code: &str) -> Value {
    app.gql_with(Some(token), CONFIRM_CHANGE, json!({ "p": phone, "c": code }))
        .await
}

/// A registration token for `phone` that stays pending (a second verification before `register`).
async fn pending_registration_token(app: &TestApp, phone: &str) -> String {
    app.registration_token(phone).await
}

/// A changed password signs in and the old one does not; every other session dies and the caller's
/// stays; the phone's pending code and registration tokens die.
#[tokio::test]
async fn change_password_revokes_other_sessions_and_pending_proofs() {
    let app = TestApp::spawn_with(|c| c.otp.otp_resend_cooldown_seconds = 0).await;
    // A registration token issued before the account existed, still pending.
    let stale = pending_registration_token(&app, PHONE).await;
    let me = access(&app.sign_up(PHONE, PASSWORD).await);
    let other = login_token(&app, PHONE, PASSWORD).await;
    app.generate_code(PHONE).await;
    let pending_code = app.last_code(PHONE);
    assert!(key_exists(&app, &format!("{{{PHONE}}}:reg_tokens")).await);
    for (key, ttl) in app.keys_with_ttl().await {
        assert!(ttl > 0, "{key} without TTL");
    }

    let r = app
        .gql_with(
            Some(&me),
            CHANGE_PASSWORD,
            json!({ "c": PASSWORD, "n": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(r["data"]["changePassword"]["revokedSessions"], 1, "{r}");
    assert_eq!(
        app.me(Some(&me)).await["data"]["me"]["phone"],
        PHONE,
        "the caller stays"
    );
    assert!(
        app.me(Some(&other)).await["data"]["me"].is_null(),
        "the other session died"
    );
    assert_code(&app.login(PHONE, PASSWORD).await, "INVALID_CREDENTIALS");
    login_token(&app, PHONE, NEW_PASSWORD).await;
    // The pending code and registration token died with the old password.
    assert_code(&app.verify(PHONE, &pending_code).await, "INVALID_CODE");
    assert_code(&app.register(&stale, PASSWORD).await, "INVALID_TOKEN");
    assert!(!key_exists(&app, &format!("{{{PHONE}}}:reg_tokens")).await);
}

/// Wrong current passwords count like wrong logins (the third locks), a weak new password is refused
/// before any hash; none of them changes the password or the sessions.
#[tokio::test]
async fn change_password_refusals_change_nothing() {
    let app = TestApp::spawn().await;
    let me = access(&app.sign_up(PHONE, PASSWORD).await);
    login_token(&app, PHONE, PASSWORD).await;
    let hash = password_hash(&app, PHONE).await;
    let sessions = live_sessions(&app).await;

    let hashes = app.auth.hasher().hashes_computed();
    for (new, reason) in [("short", "TOO_SHORT"), ("password123", "TOO_COMMON")] {
        let r = app
            .gql_with(Some(&me), CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": new }))
            .await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], "newPassword");
        assert_eq!(r["errors"][0]["extensions"]["reason"], reason);
    }
    assert_eq!(
        app.auth.hasher().hashes_computed(),
        hashes,
        "no hash for a refused new password"
    );
    let unauthenticated = app
        .gql(CHANGE_PASSWORD, json!({ "c": PASSWORD, "n": NEW_PASSWORD }))
        .await;
    assert_code(&unauthenticated, "UNAUTHENTICATED");

    let wrong = |i: usize| json!({ "c": format!("wrong-password-{i}"), "n": NEW_PASSWORD });
    assert_code(
        &app.gql_with(Some(&me), CHANGE_PASSWORD, wrong(1)).await,
        "INVALID_CREDENTIALS",
    );
    assert_code(
        &app.gql_with(Some(&me), CHANGE_PASSWORD, wrong(2)).await,
        "INVALID_CREDENTIALS",
    );
    assert_code(
        &app.gql_with(Some(&me), CHANGE_PASSWORD, wrong(3)).await,
        "ACCOUNT_LOCKED",
    );
    // Locked like three wrong logins: sign-in by password and the right current password too.
    assert_code(&app.login(PHONE, PASSWORD).await, "ACCOUNT_LOCKED");
    let right = json!({ "c": PASSWORD, "n": NEW_PASSWORD });
    assert_code(
        &app.gql_with(Some(&me), CHANGE_PASSWORD, right).await,
        "ACCOUNT_LOCKED",
    );

    assert_eq!(
        password_hash(&app, PHONE).await,
        hash,
        "the password is unchanged"
    );
    assert_eq!(live_sessions(&app).await, sessions, "no session was revoked");
}

/// A reset by code: every session dies, the lock is lifted, the new password signs in; a wrong code
/// changes nothing; an unknown phone looks like a known one until the code is right.
#[tokio::test]
async fn reset_password_revokes_every_session_and_lifts_the_lock() {
    let app = TestApp::spawn_with(|c| c.otp.otp_resend_cooldown_seconds = 0).await;
    let first = access(&app.sign_up(PHONE, PASSWORD).await);
    let second = login_token(&app, PHONE, PASSWORD).await;
    for i in 0..3 {
        app.login(PHONE, &format!("wrong-password-{i}")).await;
    }
    assert_code(&app.login(PHONE, PASSWORD).await, "ACCOUNT_LOCKED");
    let hash = password_hash(&app, PHONE).await;

    app.generate_code(PHONE).await;
    let code = app.last_code(PHONE);
    let wrong_code = if code == "000000" { "000001" } else { "000000" };
    let reset = |code: &str, pw: &str| json!({ "p": PHONE, "c": code, "n": pw });
    let weak = app.gql(RESET_PASSWORD, reset(&code, "password123")).await;
    assert_code(&weak, "BAD_USER_INPUT");
    assert_eq!(weak["errors"][0]["extensions"]["field"], "newPassword");
    let refused = app.gql(RESET_PASSWORD, reset(wrong_code, NEW_PASSWORD)).await;
    assert_code(&refused, "INVALID_CODE");
    // An unknown phone with a wrong code: the very same answer.
    app.generate_code(OTHER).await;
    let unknown = app
        .gql(
            RESET_PASSWORD,
            json!({ "p": OTHER, "c": wrong_code, "n": NEW_PASSWORD }),
        )
        .await;
    assert_eq!(unknown, refused);
    assert_eq!(password_hash(&app, PHONE).await, hash, "refusals change nothing");
    assert_eq!(live_sessions(&app).await, 2);

    let r = app.gql(RESET_PASSWORD, reset(&code, NEW_PASSWORD)).await;
    assert!(r["errors"].is_null(), "{r}");
    let fresh = access(&r["data"]["resetPassword"]);
    assert_eq!(claims(&fresh)["amr"], json!(["sms"]));
    for old in [&first, &second] {
        assert!(
            app.me(Some(old)).await["data"]["me"].is_null(),
            "every old session died"
        );
    }
    assert_eq!(live_sessions(&app).await, 1, "only the reset's own session");
    assert_eq!(app.me(Some(&fresh)).await["data"]["me"]["phone"], PHONE);
    login_token(&app, PHONE, NEW_PASSWORD).await;
    assert_code(&app.login(PHONE, PASSWORD).await, "INVALID_CREDENTIALS");
    // The code is used up.
    assert_code(
        &app.gql(RESET_PASSWORD, reset(&code, NEW_PASSWORD)).await,
        "INVALID_CODE",
    );

    // The right code of a phone without an account: what verifyUser would tell its holder.
    app.generate_code(OTHER).await;
    let right = app
        .gql(
            RESET_PASSWORD,
            json!({ "p": OTHER, "c": app.last_code(OTHER), "n": NEW_PASSWORD }),
        )
        .await;
    assert_code(&right, "INVALID_CREDENTIALS");
    assert_eq!(phones(&app).await, vec![PHONE.to_owned()], "no account was made");
}

/// Sensitive changes need a recent sign-in; a refresh keeps the original sign-in time, a new sign-in
/// is recent again. The token carries auth_time and amr.
#[tokio::test]
async fn stale_sessions_need_reauthentication() {
    let app = TestApp::spawn_with(|c| c.tokens.reauth_seconds = 1).await;
    let signed_up = app.sign_up(PHONE, PASSWORD).await;
    let token = access(&signed_up);
    let first = claims(&token);
    assert_eq!(
        first["amr"],
        json!(["sms"]),
        "registration proved the phone by code"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let refreshed = app.gql(REFRESH, json!({ "t": signed_up["refreshToken"] })).await;
    let refreshed = access(&refreshed["data"]["refreshToken"]);
    assert_eq!(
        claims(&refreshed)["auth_time"],
        first["auth_time"],
        "a refresh is no sign-in"
    );
    for t in [&token, &refreshed] {
        let r = app
            .gql_with(Some(t), REQUEST_CHANGE, json!({ "p": NEW_PHONE }))
            .await;
        assert_code(&r, "REAUTHENTICATION_REQUIRED");
        assert_code(
            &app.gql_with(Some(t), DELETE_ACCOUNT, json!({})).await,
            "REAUTHENTICATION_REQUIRED",
        );
        assert_code(
            &confirm_change(&app, t, NEW_PHONE, "123456").await,
            "REAUTHENTICATION_REQUIRED",
        );
    }
    assert_eq!(app.sms.count(NEW_PHONE), 0, "no code was sent");
    assert_eq!(
        phones(&app).await,
        vec![PHONE.to_owned()],
        "the account is still there"
    );

    // Signing in again makes a recent session.
    let again = login_token(&app, PHONE, PASSWORD).await;
    assert_eq!(claims(&again)["amr"], json!(["pwd"]));
    let r = app.gql_with(Some(&again), DELETE_ACCOUNT, json!({})).await;
    assert!(r["errors"].is_null(), "{r}");
}

/// Phone change: a code to the new number, the account moves, sessions stay, the old number is told,
/// the old number's lock does not follow and the new number's lock does not stay.
#[tokio::test]
async fn phone_change_moves_the_account_and_tells_the_old_number() {
    let app = TestApp::spawn().await;
    let me = access(&app.sign_up(PHONE, PASSWORD).await);
    let id: String = claims(&me)["sub"].as_str().unwrap().to_owned();
    let sessions = live_sessions(&app).await;
    // Someone locked both numbers with wrong passwords.
    for phone in [PHONE, NEW_PHONE] {
        for i in 0..3 {
            app.login(phone, &format!("wrong-password-{i}")).await;
        }
        assert_code(&app.login(phone, PASSWORD).await, "ACCOUNT_LOCKED");
    }

    let sent = request_change(&app, &me, NEW_PHONE).await;
    assert_eq!(sent["data"]["requestPhoneChange"]["phone"], NEW_PHONE, "{sent}");
    let code = app.last_code(NEW_PHONE);
    let r = confirm_change(&app, &me, NEW_PHONE, &code).await;
    assert_eq!(
        r["data"]["confirmPhoneChange"],
        json!({ "id": id, "phone": NEW_PHONE }),
        "{r}"
    );

    assert_eq!(phones(&app).await, vec![NEW_PHONE.to_owned()]);
    assert_eq!(
        app.me(Some(&me)).await["data"]["me"]["phone"],
        NEW_PHONE,
        "the session stays"
    );
    assert_eq!(live_sessions(&app).await, sessions);
    // The new number signs in (its lock, from before it was ours, is gone); the old one is no account.
    login_token(&app, NEW_PHONE, PASSWORD).await;
    assert_code(&app.login(PHONE, PASSWORD).await, "ACCOUNT_LOCKED");
    assert!(!key_exists(&app, &format!("{{{NEW_PHONE}}}:phone_change")).await);
    // The old number was told, without the new number.
    app.wait_outbox_empty().await;
    let told = app.sms.bodies(PHONE);
    let notice = told.last().expect("a notice to the old number");
    assert!(
        notice.contains("phone number of your account was changed"),
        "{notice}"
    );
    assert!(!notice.contains("0022"), "{notice}");
    // The code is used up.
    assert_code(&confirm_change(&app, &me, NEW_PHONE, &code).await, "INVALID_CODE");
}

/// A number with an account is named only to whoever proved to hold it; a code is for the user who
/// asked, and for that number only; refused numbers send nothing; none of it changes anything.
#[tokio::test]
async fn phone_change_refusals_change_nothing() {
    let app = TestApp::spawn_with(|c| {
        c.otp.otp_resend_cooldown_seconds = 0;
        c.sms.sms_allowed_regions = "US".into();
    })
    .await;
    let a = access(&app.sign_up(PHONE, PASSWORD).await);
    let b = access(&app.sign_up(OTHER, PASSWORD).await);

    // To B's number: asked without a word about B; a wrong code is INVALID_CODE; the right one says
    // PHONE_ALREADY_REGISTERED.
    let sent = request_change(&app, &a, OTHER).await;
    assert!(sent["errors"].is_null(), "{sent}");
    let code = app.last_code(OTHER);
    let wrong = if code == "000000" { "000001" } else { "000000" };
    assert_code(&confirm_change(&app, &a, OTHER, wrong).await, "INVALID_CODE");
    assert_code(
        &confirm_change(&app, &a, OTHER, &code).await,
        "PHONE_ALREADY_REGISTERED",
    );

    // A's pending change to a free number: B, knowing the code, cannot use it; a code of another
    // number is no code for it; A still can afterwards (nothing was consumed).
    request_change(&app, &a, NEW_PHONE).await;
    let code = app.last_code(NEW_PHONE);
    assert_code(&confirm_change(&app, &b, NEW_PHONE, &code).await, "INVALID_CODE");
    app.generate_code("+16502530033").await;
    let foreign = app.last_code("+16502530033");
    if foreign != code {
        assert_code(
            &confirm_change(&app, &a, NEW_PHONE, &foreign).await,
            "INVALID_CODE",
        );
    }
    assert_eq!(
        phones(&app).await,
        vec![PHONE.to_owned(), OTHER.to_owned()],
        "nobody moved"
    );

    // Numbers that get no SMS: refused before anything is sent or stored.
    for (number, reason) in [
        ("+1 900 555 0100", "UNSUPPORTED_NUMBER_TYPE"),
        ("+447400123456", "COUNTRY_NOT_ALLOWED"),
        (PHONE, "SAME_PHONE"),
        ("12", "INVALID_PHONE"),
    ] {
        let r = app
            .gql_with(Some(&a), REQUEST_CHANGE, json!({ "p": number }))
            .await;
        assert_code(&r, "BAD_USER_INPUT");
        assert_eq!(r["errors"][0]["extensions"]["field"], "newPhone", "{r}");
        assert_eq!(r["errors"][0]["extensions"]["reason"], reason, "{number}: {r}");
    }
    assert!(
        !app.keys_with_ttl()
            .await
            .iter()
            .any(|(k, _)| k.contains("{+447400123456}") || k.contains("{+19005550100}")),
        "a refused number has no key"
    );
    assert_code(
        &app.gql(REQUEST_CHANGE, json!({ "p": NEW_PHONE })).await,
        "UNAUTHENTICATED",
    );

    // Every key written on the way (pending changes, token indexes) has a TTL.
    for (key, ttl) in app.keys_with_ttl().await {
        assert!(ttl > 0, "{key} without TTL");
    }
    let r = confirm_change(&app, &a, NEW_PHONE, &code).await;
    assert_eq!(r["data"]["confirmPhoneChange"]["phone"], NEW_PHONE, "{r}");
    assert_eq!(phones(&app).await, vec![OTHER.to_owned(), NEW_PHONE.to_owned()]);
}

/// Two users confirming a move to one number (twice each) while a sign-up of that number races them:
/// one owner, the others get a clear refusal, nobody else moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_phone_changes_and_sign_up_leave_one_owner() {
    let app = Arc::new(TestApp::spawn_with(|c| c.otp.otp_resend_cooldown_seconds = 0).await);
    let a = access(&app.sign_up(PHONE, PASSWORD).await);
    let b = access(&app.sign_up(OTHER, PASSWORD).await);
    let registration = app.registration_token(NEW_PHONE).await;
    request_change(&app, &a, NEW_PHONE).await;
    request_change(&app, &b, NEW_PHONE).await;
    // One code per number: B's request replaced A's code, and the pending change is B's.
    let sms_code = app.last_code(NEW_PHONE);

    let mut set = tokio::task::JoinSet::new();
    for token in [&a, &b, &a, &b] {
        let (app, token, code) = (app.clone(), token.clone(), sms_code.clone());
        set.spawn(async move { ("confirm", confirm_change(&app, &token, NEW_PHONE, &code).await) });
    }
    {
        let app = app.clone();
        set.spawn(async move { ("register", app.register(&registration, PASSWORD).await) });
    }
    let results = set.join_all().await;
    let won: Vec<_> = results.iter().filter(|(_, r)| r["errors"].is_null()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(
        results.iter().all(|(_, r)| r["errors"].is_null()
            || matches!(code(r), Some("INVALID_CODE" | "PHONE_ALREADY_REGISTERED"))),
        "{results:?}"
    );
    let owners: Vec<String> = phones(&app).await;
    assert_eq!(owners.iter().filter(|p| *p == NEW_PHONE).count(), 1);
    if won[0].0 == "confirm" {
        assert_eq!(owners, vec![PHONE.to_owned(), NEW_PHONE.to_owned()], "B moved");
    } else {
        assert_eq!(owners.len(), 3, "the sign-up won, nobody moved");
    }
}

/// Devices: a user sees their own sessions with user agent and IP, refreshes bump last use, and ends
/// their own sessions only; another user's session id is NOT_FOUND, like one that does not exist.
#[tokio::test]
async fn users_see_and_end_their_own_sessions_only() {
    let app = TestApp::spawn().await;
    let a = access(&app.sign_up(PHONE, PASSWORD).await);
    let b = access(&app.sign_up(OTHER, PASSWORD).await);
    let long_agent = format!("Phone/1.0 {}", "x".repeat(400));
    let res = app
        .client
        .post(app.url("/graphql"))
        .header("user-agent", &long_agent)
        .json(&json!({ "query": "mutation($p: String!, $w: String!) { login(phone: $p, password: $w) { accessToken refreshToken } }",
                       "variables": { "p": PHONE, "w": PASSWORD } }))
        .send()
        .await
        .unwrap();
    let login: Value = res.json().await.unwrap();
    let laptop = access(&login["data"]["login"]);
    app.gql(REFRESH, json!({ "t": login["data"]["login"]["refreshToken"] }))
        .await;

    let mine = app.gql_with(Some(&a), MY_SESSIONS, json!({})).await;
    let list = mine["data"]["mySessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{mine}"));
    assert_eq!(list.len(), 2, "{mine}");
    let laptop_sid = claims(&laptop)["sid"].as_str().unwrap().to_owned();
    let a_sid = claims(&a)["sid"].as_str().unwrap().to_owned();
    let row = list
        .iter()
        .find(|s| s["id"] == laptop_sid)
        .expect("the laptop's session");
    assert_eq!(row["userAgent"].as_str().unwrap().chars().count(), 256);
    assert!(long_agent.starts_with(row["userAgent"].as_str().unwrap()));
    assert_eq!(row["ip"], "127.0.0.1");
    assert_eq!(row["current"], false);
    assert_eq!(row["authMethods"], json!(["pwd"]));
    assert!(!row["lastUsedAt"].is_null(), "the refresh was recorded");
    let own = list
        .iter()
        .find(|s| s["id"] == a_sid)
        .expect("the caller's session");
    assert_eq!(own["current"], true);
    assert!(own["lastUsedAt"].is_null());

    // B sees only B's session, and cannot end A's: NOT_FOUND, like an id that does not exist.
    let theirs = app.gql_with(Some(&b), MY_SESSIONS, json!({})).await;
    assert_eq!(theirs["data"]["mySessions"].as_array().unwrap().len(), 1);
    let foreign = app
        .gql_with(Some(&b), REVOKE_SESSION, json!({ "id": laptop_sid }))
        .await;
    let unknown = app
        .gql_with(
            Some(&b),
            REVOKE_SESSION,
            json!({ "id": uuid::Uuid::new_v4().to_string() }),
        )
        .await;
    let garbage = app
        .gql_with(Some(&b), REVOKE_SESSION, json!({ "id": "garbage" }))
        .await;
    for r in [&foreign, &unknown, &garbage] {
        assert_code(r, "NOT_FOUND");
    }
    assert_eq!(foreign["errors"][0]["message"], unknown["errors"][0]["message"]);
    assert_eq!(
        app.me(Some(&laptop)).await["data"]["me"]["phone"],
        PHONE,
        "still signed in"
    );
    assert_eq!(live_sessions(&app).await, 3);
    assert_code(&app.gql(MY_SESSIONS, json!({})).await, "UNAUTHENTICATED");

    // A ends the laptop's session.
    let r = app
        .gql_with(Some(&a), REVOKE_SESSION, json!({ "id": laptop_sid }))
        .await;
    assert_eq!(r["data"]["revokeSession"]["revokedSessions"], 1, "{r}");
    assert!(app.me(Some(&laptop)).await["data"]["me"].is_null());
    assert_code(
        &app.gql_with(Some(&a), REVOKE_SESSION, json!({ "id": laptop_sid }))
            .await,
        "NOT_FOUND",
    );
}

/// Deleting the account: the row, its sessions and the phone's pending state go, and the phone can
/// sign up again; a registration token issued before the account existed cannot bring it back.
#[tokio::test]
async fn deleted_account_phone_signs_up_again() {
    let app = TestApp::spawn_with(|c| c.otp.otp_resend_cooldown_seconds = 0).await;
    let stale = pending_registration_token(&app, PHONE).await;
    let signed_up = app.sign_up(PHONE, PASSWORD).await;
    let me = access(&signed_up);
    let old_id = signed_up["user"]["id"].clone();
    login_token(&app, PHONE, PASSWORD).await;
    for i in 0..3 {
        app.login(PHONE, &format!("wrong-password-{i}")).await;
    }
    app.generate_code(PHONE).await;
    let pending_code = app.last_code(PHONE);

    let r = app.gql_with(Some(&me), DELETE_ACCOUNT, json!({})).await;
    assert_eq!(r["data"]["deleteAccount"]["deletedUserId"], old_id, "{r}");
    assert!(phones(&app).await.is_empty());
    assert_eq!(app.session_counts().await.0, 0, "deleted with the account");
    assert!(app.me(Some(&me)).await["data"]["me"].is_null());
    for key in ["otp", "pw_lock", "pw_attempts", "reg_tokens"] {
        assert!(
            !key_exists(&app, &format!("{{{PHONE}}}:{key}")).await,
            "{key} left"
        );
    }
    assert_code(&app.register(&stale, PASSWORD).await, "INVALID_TOKEN");
    assert_code(&app.verify(PHONE, &pending_code).await, "INVALID_CODE");
    assert_code(
        &app.gql_with(Some(&me), DELETE_ACCOUNT, json!({})).await,
        "UNAUTHENTICATED",
    );

    // The phone signs up again, as a new account.
    let again = app.sign_up(PHONE, NEW_PASSWORD).await;
    assert_ne!(again["user"]["id"], old_id);
    login_token(&app, PHONE, NEW_PASSWORD).await;
}

/// Each flow of the account's life leaves its audit event, for the right user, with its detail; a
/// refused one changes nothing but is recorded too (a wrong current password).
#[tokio::test]
async fn account_flows_leave_their_audit_events() {
    let app = TestApp::spawn_with(|c| c.otp.otp_resend_cooldown_seconds = 0).await;
    let me = access(&app.sign_up(PHONE, PASSWORD).await);
    let id = claims(&me)["sub"].as_str().unwrap().to_owned();
    login_token(&app, PHONE, PASSWORD).await;
    let change = |c: &str, n: &str| json!({ "c": c, "n": n });
    let wrong = app
        .gql_with(
            Some(&me),
            CHANGE_PASSWORD,
            change("wrong-password-0", NEW_PASSWORD),
        )
        .await;
    assert_code(&wrong, "INVALID_CREDENTIALS");
    let changed = app
        .gql_with(Some(&me), CHANGE_PASSWORD, change(PASSWORD, NEW_PASSWORD))
        .await;
    assert_eq!(
        changed["data"]["changePassword"]["revokedSessions"], 1,
        "{changed}"
    );

    app.generate_code(PHONE).await;
    let reset = app
        .gql(
            RESET_PASSWORD,
            json!({ "p": PHONE, "c": app.last_code(PHONE), "n": "cobalt-lantern-5520" }),
        )
        .await;
    let fresh = access(&reset["data"]["resetPassword"]);
    let other = login_token(&app, PHONE, "cobalt-lantern-5520").await;
    let sid = claims(&other)["sid"].as_str().unwrap().to_owned();
    let revoked = app
        .gql_with(Some(&fresh), REVOKE_SESSION, json!({ "id": sid }))
        .await;
    assert!(revoked["errors"].is_null(), "{revoked}");
    assert!(request_change(&app, &fresh, NEW_PHONE).await["errors"].is_null());
    let moved = confirm_change(&app, &fresh, NEW_PHONE, &app.last_code(NEW_PHONE)).await;
    assert!(moved["errors"].is_null(), "{moved}");
    let deleted = app.gql_with(Some(&fresh), DELETE_ACCOUNT, json!({})).await;
    assert!(deleted["errors"].is_null(), "{deleted}");

    let account_events = [
        "password_change_failed",
        "password_changed",
        "password_reset",
        "session_revoked",
        "phone_changed",
        "account_deleted",
    ];
    // A refused change goes through the writer's queue: wait for it.
    let start = std::time::Instant::now();
    let events = loop {
        let rows = app.audit_events(&account_events).await;
        if rows.len() >= account_events.len() {
            break rows;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, account_events);
    for (event, user, phone, _) in &events {
        assert_eq!(
            user.map(|u| u.to_string()).as_deref(),
            Some(id.as_str()),
            "{event}"
        );
        assert!(
            phone.as_deref().is_some_and(|p| p.contains("***")),
            "{event}: {phone:?}"
        );
    }
    assert_eq!(events[1].3["revokedSessions"], 1);
    assert_eq!(events[2].3["revokedSessions"], 1);
    assert_eq!(events[3].3["current"], false);
    assert_eq!(events[4].2.as_deref(), Some("+1650***0022"), "the new number");
    assert_eq!(events[4].3["from"], "+1650***0000");
}
