//! Browser apps: CORS (CORS_ALLOWED_ORIGINS) and the refresh cookie (REFRESH_TOKEN_COOKIE), over
//! HTTP, with the cookie jar kept by hand.

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use crate::helpers::*;

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example";
const REFRESH: &str = "mutation { refreshToken { accessToken refreshToken user { id } } }";

/// POSTs a GraphQL request with extra headers; returns status, headers and body.
async fn post(
    app: &TestApp,
    headers: &[(&str, &str)],
    query: &str,
    variables: Value,
) -> (u16, HeaderMap, Value) {
    let mut req = app
        .client
        .post(app.url("/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.json().await.unwrap_or(Value::Null))
}

fn cors_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `__Host-refresh` Set-Cookie of a response: (value, attributes).
fn set_cookie(headers: &HeaderMap) -> Option<(String, String)> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-refresh="))
        .map(|v| {
            let (pair, attributes) = v.split_once(';').unwrap_or((v, ""));
            (
                pair["__Host-refresh=".len()..].to_owned(),
                attributes.trim().to_owned(),
            )
        })
}

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("/graphql"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,authorization")
        .send()
        .await
        .unwrap()
}

/// Preflight from an allowed origin: 204 with the methods, headers and max-age; from any other origin,
/// and on a server with no allowed origin, no CORS header at all. Actual requests likewise.
#[tokio::test]
async fn cors_preflight_and_requests() {
    let app =
        TestApp::spawn_with(|c| c.http.cors_allowed_origins = format!("{APP}, http://localhost:3000")).await;
    let res = preflight(&app, APP).await;
    assert_eq!(res.status(), 204);
    let h = res.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(APP));
    let methods = header(h, "access-control-allow-methods")
        .unwrap()
        .to_ascii_uppercase();
    assert!(methods.contains("GET") && methods.contains("POST"), "{methods}");
    let allowed = header(h, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("content-type") && allowed.contains("authorization"),
        "{allowed}"
    );
    assert_eq!(header(h, "access-control-max-age"), Some("600"));
    assert_eq!(
        header(h, "access-control-allow-credentials"),
        None,
        "no cookies, no credentials"
    );
    assert!(
        header(h, "vary")
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("origin"),
        "{h:?}"
    );

    let res = preflight(&app, EVIL).await;
    assert!(cors_headers(res.headers()).is_empty(), "{:?}", res.headers());

    let (s, h, v) = post(&app, &[("origin", APP)], "{ me { id } }", json!({})).await;
    assert_eq!(
        (s, header(&h, "access-control-allow-origin")),
        (200, Some(APP)),
        "{v}"
    );
    let (s, h, _) = post(&app, &[("origin", EVIL)], "{ me { id } }", json!({})).await;
    assert_eq!(s, 200);
    assert!(cors_headers(&h).is_empty(), "{h:?}");
    // A client without Origin (a server, a native app) skips the CORS layers, but the answer still
    // varies by Origin for a shared cache.
    let (s, h, _) = post(&app, &[], "{ me { id } }", json!({})).await;
    assert_eq!(s, 200);
    assert!(cors_headers(&h).is_empty(), "{h:?}");
    assert!(
        header(&h, "vary")
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("origin"),
        "{h:?}"
    );

    // The default: no cross-origin access at all.
    let closed = TestApp::spawn().await;
    let res = preflight(&closed, APP).await;
    assert!(cors_headers(res.headers()).is_empty(), "{:?}", res.headers());
    let (_, h, _) = post(&closed, &[("origin", APP)], "{ me { id } }", json!({})).await;
    assert!(cors_headers(&h).is_empty(), "{h:?}");
}

async fn cookie_app() -> TestApp {
    TestApp::spawn_with(|c| {
        c.http.cors_allowed_origins = APP.into();
        c.tokens.refresh_token_cookie = true;
    })
    .await
}

/// Cookie mode: register and login set the `__Host-refresh` cookie (HttpOnly, Secure, SameSite=Strict,
/// Path=/, Max-Age = the session's remaining life); a browser's request gets no refresh token in the
/// body, a native app's still does; refreshToken without an argument reads the cookie and rotates it;
/// logout clears it; CORS allows credentials.
#[tokio::test]
async fn refresh_cookie_is_set_read_rotated_and_cleared() {
    let app = cookie_app().await;
    let res = preflight(&app, APP).await;
    assert_eq!(
        header(res.headers(), "access-control-allow-credentials"),
        Some("true")
    );

    let token = app.registration_token(PHONE).await;
    let (s, h, v) = post(
        &app,
        &[("origin", APP)],
        "mutation($i: RegisterInput!) { register(input: $i) { accessToken refreshToken user { id } } }",
        json!({ "i": { "registrationToken": token, "password": PASSWORD } }),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["errors"].is_null(), "{v}");
    assert!(
        v["data"]["register"]["refreshToken"].is_null(),
        "a browser never sees it: {v}"
    );
    let (cookie, attributes) = set_cookie(&h).expect("the refresh cookie is set");
    assert_eq!(cookie.len(), 43, "{cookie}");
    let max_age: u64 = attributes
        .split("; ")
        .find_map(|a| a.strip_prefix("Max-Age="))
        .unwrap()
        .parse()
        .unwrap();
    assert!((2_591_990..=2_592_000).contains(&max_age), "{max_age}");
    assert!(
        attributes.ends_with("Path=/; HttpOnly; Secure; SameSite=Strict"),
        "{attributes}"
    );

    // A native app (no Origin) still gets the token in the body, and the cookie too.
    let (_, h, v) = post(
        &app,
        &[],
        "mutation($p: String!, $w: String!) { login(phone: $p, password: $w) { refreshToken } }",
        json!({ "p": PHONE, "w": PASSWORD }),
    )
    .await;
    assert_eq!(
        v["data"]["login"]["refreshToken"].as_str().map(str::len),
        Some(43),
        "{v}"
    );
    assert!(set_cookie(&h).is_some());

    // refreshToken without an argument reads the cookie, from the allowed origin and from our own.
    let jar = format!("__Host-refresh={cookie}");
    let (s, h, v) = post(&app, &[("origin", APP), ("cookie", &jar)], REFRESH, json!({})).await;
    assert_eq!(s, 200);
    assert!(v["data"]["refreshToken"]["accessToken"].is_string(), "{v}");
    assert!(v["data"]["refreshToken"]["refreshToken"].is_null(), "{v}");
    let (rotated, _) = set_cookie(&h).expect("a new cookie");
    assert_ne!(rotated, cookie);
    let own = app.url("");
    let jar = format!("theme=dark; __Host-refresh={rotated}");
    let (_, h, v) = post(&app, &[("origin", &own), ("cookie", &jar)], REFRESH, json!({})).await;
    assert!(
        v["data"]["refreshToken"]["accessToken"].is_string(),
        "same origin: {v}"
    );
    let (latest, _) = set_cookie(&h).unwrap();
    let access = v["data"]["refreshToken"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();

    // logout clears it.
    let bearer = format!("Bearer {access}");
    let jar = format!("__Host-refresh={latest}");
    let (_, h, v) = post(
        &app,
        &[("origin", APP), ("cookie", &jar), ("authorization", &bearer)],
        "mutation { logout { revokedSessions } }",
        json!({}),
    )
    .await;
    assert_eq!(v["data"]["logout"]["revokedSessions"], 1, "{v}");
    let (value, attributes) = set_cookie(&h).expect("cleared");
    assert_eq!(value, "");
    assert!(attributes.starts_with("Max-Age=0;"), "{attributes}");
}

/// CSRF: a mutation carrying the cookie from another origin, or with no Origin, is refused with
/// FORBIDDEN and changes nothing (the cookie still works afterwards); a query is not refused. A forged
/// cookie is INVALID_TOKEN and is cleared; with neither argument nor cookie, INVALID_TOKEN.
#[tokio::test]
async fn refresh_cookie_csrf_and_bad_cookies() {
    let app = cookie_app().await;
    let (_, h, _) = post(
        &app,
        &[("origin", APP)],
        "mutation($i: RegisterInput!) { register(input: $i) { accessToken } }",
        json!({ "i": { "registrationToken": app.registration_token(PHONE).await, "password": PASSWORD } }),
    )
    .await;
    let (cookie, _) = set_cookie(&h).unwrap();
    let jar = format!("__Host-refresh={cookie}");

    for headers in [
        vec![("origin", EVIL), ("cookie", jar.as_str())],
        vec![("cookie", jar.as_str())],
        vec![("origin", "null"), ("cookie", jar.as_str())],
    ] {
        let (s, h, v) = post(&app, &headers, REFRESH, json!({})).await;
        assert_eq!((s, code(&v)), (403, Some("FORBIDDEN")), "{headers:?}: {v}");
        assert!(set_cookie(&h).is_none());
    }
    // A query with the cookie from elsewhere is no CSRF risk: it runs.
    let (s, _, v) = post(
        &app,
        &[("origin", EVIL), ("cookie", &jar)],
        "{ me { id } }",
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["errors"].is_null(), "{v}");
    // Nothing changed: the cookie is still good.
    let (_, _, v) = post(&app, &[("origin", APP), ("cookie", &jar)], REFRESH, json!({})).await;
    assert!(v["data"]["refreshToken"]["accessToken"].is_string(), "{v}");

    // Forged (and now also the used one): INVALID_TOKEN, and the cookie is cleared.
    for bad in ["A".repeat(43), cookie.clone()] {
        let jar = format!("__Host-refresh={bad}");
        let (_, h, v) = post(&app, &[("origin", APP), ("cookie", &jar)], REFRESH, json!({})).await;
        assert_code(&v, "INVALID_TOKEN");
        let (value, attributes) = set_cookie(&h).expect("cleared");
        assert_eq!(value, "");
        assert!(attributes.starts_with("Max-Age=0;"), "{attributes}");
    }
    // Neither argument nor cookie.
    let (_, _, v) = post(&app, &[("origin", APP)], REFRESH, json!({})).await;
    assert_code(&v, "INVALID_TOKEN");
}

/// Without the cookie mode, a Cookie header is ignored: no cookie is read or set.
#[tokio::test]
async fn without_cookie_mode_no_cookie_is_read_or_set() {
    let app = TestApp::spawn().await;
    let r = app.sign_up(PHONE, PASSWORD).await;
    assert_eq!(r["refreshToken"].as_str().map(str::len), Some(43));
    let jar = format!("__Host-refresh={}", r["refreshToken"].as_str().unwrap());
    let (_, h, v) = post(&app, &[("cookie", &jar)], REFRESH, json!({})).await;
    assert_code(&v, "INVALID_TOKEN");
    assert!(set_cookie(&h).is_none());
}

/// Cookie mode: `resetPassword` signs in like the other sign-ins: the refresh cookie is set (and a
/// browser gets no refresh token in the body), and that cookie refreshes the new session.
#[tokio::test]
async fn reset_password_sets_the_refresh_cookie() {
    let app = TestApp::spawn_with(|c| {
        c.http.cors_allowed_origins = APP.into();
        c.tokens.refresh_token_cookie = true;
        c.otp.otp_resend_cooldown_seconds = 0;
    })
    .await;
    app.sign_up(PHONE, PASSWORD).await;
    let sent = app.generate_code(PHONE).await;
    assert!(sent["errors"].is_null(), "{sent}");
    app.wait_outbox_empty().await;
    let (s, h, v) = post(
        &app,
        &[("origin", APP)],
        "mutation($p: String!, $c: String!, $n: String!) {
            resetPassword(phone: $p, code: $c, newPassword: $n) { accessToken refreshToken } }",
        json!({ "p": PHONE, "c": app.last_code(PHONE), "n": "saffron-harbour-2041" }),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["data"]["resetPassword"]["accessToken"].is_string(), "{v}");
    assert!(
        v["data"]["resetPassword"]["refreshToken"].is_null(),
        "a browser never sees it: {v}"
    );
    let (cookie, _) = set_cookie(&h).expect("the refresh cookie is set");
    let jar = format!("__Host-refresh={cookie}");
    let (_, _, v) = post(&app, &[("origin", APP), ("cookie", &jar)], REFRESH, json!({})).await;
    assert!(v["data"]["refreshToken"]["accessToken"].is_string(), "{v}");
}
