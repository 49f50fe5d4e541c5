use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::helpers::*;

const REFRESH: &str =
    "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken refreshToken user { phone } } }";

fn part(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).expect("three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).expect("base64url")).expect("json")
}

/// The access token: EdDSA with a kid, the claims RFC 9068 2.2 requires (iss exp aud sub client_id iat
/// jti) and sid, no phone; verifiable with the published JWKS alone, found from the discovery document
/// of the issuer, which is the address the server listens on and claims nothing else.
#[tokio::test]
async fn access_token_claims_and_jwks() {
    let app = TestApp::spawn().await;
    let r = app.sign_up(PHONE, PASSWORD).await;
    let token = r["accessToken"].as_str().unwrap();
    let header = part(token, 0);
    assert_eq!(header["alg"], "EdDSA");
    let claims = part(token, 1);
    for claim in ["iss", "aud", "sub", "client_id", "jti", "sid", "iat", "exp"] {
        assert!(!claims[claim].is_null(), "{claim} missing: {claims}");
    }
    // JWT_ISSUER defaults to the address the server listens on; JWT_CLIENT_ID to the audience.
    assert_eq!(claims["iss"], app.url(""));
    assert_eq!(claims["client_id"], "phone-auth");
    let again = app.login(PHONE, PASSWORD).await;
    let again = part(again["data"]["login"]["accessToken"].as_str().unwrap(), 1);
    assert_ne!(claims["jti"], again["jti"], "jti is unique per token");
    assert_eq!(claims["sub"], r["user"]["id"]);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        900
    );
    assert!(
        !token.contains("650") && !claims.to_string().contains(PHONE),
        "no phone in the token"
    );

    let jwks: jsonwebtoken::jwk::JwkSet = app.get_json("/.well-known/jwks.json").await;
    let jwk = jwks.find(header["kid"].as_str().unwrap()).expect("kid published");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[claims["aud"].as_str().unwrap()]);
    validation.set_issuer(&[claims["iss"].as_str().unwrap()]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).expect("verifies with the JWKS");

    // The discovery document: issuer and jwks_uri only (RFC 8414 section 2 members; no claims about
    // ID tokens or endpoints this service does not have), and jwks_uri points at this server.
    let oidc: Value = app.get_json("/.well-known/openid-configuration").await;
    assert_eq!(
        oidc,
        json!({ "issuer": claims["iss"], "jwks_uri": app.url("/.well-known/jwks.json") })
    );
    let keys = app
        .client
        .get(oidc["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(keys.status(), 200);
}

/// An access token never outlives its session: issued 3 s before the session's absolute end, it
/// expires with the session, not 900 s later, and says so in expiresInSeconds.
#[tokio::test]
async fn access_token_expires_with_its_session() {
    let app = TestApp::spawn_with(|c| c.tokens.session_ttl_seconds = 5).await;
    let r = app.sign_up(PHONE, PASSWORD).await;
    let claims = part(r["accessToken"].as_str().unwrap(), 1);
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(lifetime <= 5, "exp is the session's end: {claims}");
    assert!(r["expiresInSeconds"].as_u64().unwrap() <= 5, "{r}");
    // A refresh 2 s later: the new token ends with the same session, sooner still.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let n = app.gql(REFRESH, json!({ "t": r["refreshToken"] })).await;
    let renewed = part(n["data"]["refreshToken"]["accessToken"].as_str().unwrap(), 1);
    assert!(
        renewed["exp"].as_u64().unwrap() <= claims["exp"].as_u64().unwrap() + 1,
        "{renewed}"
    );
    assert!(
        renewed["exp"].as_u64().unwrap() - renewed["iat"].as_u64().unwrap() <= 3,
        "{renewed}"
    );
}

/// A tampered or foreign token is no token: me is null, logout is UNAUTHENTICATED.
#[tokio::test]
async fn bad_tokens() {
    let app = TestApp::spawn().await;
    let r = app.sign_up(PHONE, PASSWORD).await;
    let token = r["accessToken"].as_str().unwrap();
    let mut tampered = token.to_owned();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    let other = TestApp::spawn().await;
    let foreign = other.sign_up(PHONE, PASSWORD).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    for t in [tampered.as_str(), foreign.as_str(), "garbage", "a.b.c"] {
        assert!(app.me(Some(t)).await["data"]["me"].is_null());
        assert_code(
            &app.gql_with(Some(t), "mutation { logout { revokedSessions } }", json!({}))
                .await,
            "UNAUTHENTICATED",
        );
    }
    assert!(app.me(None).await["data"]["me"].is_null());
    assert!(
        app.me(None).await["errors"].is_null(),
        "me without a token is null, not an error"
    );
    assert_code(
        &app.gql("mutation { logout { revokedSessions } }", json!({}))
            .await,
        "UNAUTHENTICATED",
    );
    // The token is read from the Authorization header only.
    let res = app
        .client
        .post(app.url(&format!("/graphql?access_token={token}")))
        .header("Cookie", format!("access_token={token}"))
        .json(&json!({ "query": "{ me { id } }" }))
        .send()
        .await
        .unwrap();
    assert!(res.json::<Value>().await.unwrap()["data"]["me"].is_null());
}

/// Refresh tokens rotate; reuse of a rotated one revokes the session.
#[tokio::test]
async fn refresh_rotation_and_reuse_detection() {
    let app = TestApp::spawn().await;
    let r = app.sign_up(PHONE, PASSWORD).await;
    let first = r["refreshToken"].as_str().unwrap().to_owned();
    assert!(URL_SAFE_NO_PAD.decode(&first).unwrap().len() >= 32, "256 bits");

    let next = app.gql(REFRESH, json!({ "t": first })).await;
    let n = &next["data"]["refreshToken"];
    assert_eq!(n["user"]["phone"], PHONE);
    let second = n["refreshToken"].as_str().unwrap().to_owned();
    let access = n["accessToken"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert_eq!(app.me(Some(&access)).await["data"]["me"]["phone"], PHONE);

    assert_eq!(
        app.refresh_token_counts().await,
        (2, 1),
        "the used one is kept for reuse detection"
    );
    // Stored only hashed (the rows themselves: PostgreSQL only).
    if !crate::helpers::embedded() {
        let stored: Vec<Vec<u8>> = sqlx::query_scalar("select token_hash from refresh_tokens")
            .fetch_all(app.pg())
            .await
            .unwrap();
        assert!(
            stored
                .iter()
                .all(|h| h.len() == 32 && h != first.as_bytes() && h != second.as_bytes())
        );
    }

    // Reusing the first: refused, and the whole session dies (the second token and the access token).
    assert_code(&app.gql(REFRESH, json!({ "t": first })).await, "INVALID_TOKEN");
    assert_code(&app.gql(REFRESH, json!({ "t": second })).await, "INVALID_TOKEN");
    assert!(app.me(Some(&access)).await["data"]["me"].is_null());
    for t in ["", "garbage", &"x".repeat(5000)] {
        assert_code(&app.gql(REFRESH, json!({ "t": t })).await, "INVALID_TOKEN");
    }
}

/// Two racing uses of one refresh token: one wins, the other is reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_refreshes() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let r = app.sign_up(PHONE, PASSWORD).await;
    let t = r["refreshToken"].as_str().unwrap().to_owned();
    let (a, b) = tokio::join!(
        app.gql(REFRESH, json!({ "t": t })),
        app.gql(REFRESH, json!({ "t": t }))
    );
    assert_eq!(
        [&a, &b].iter().filter(|v| v["errors"].is_null()).count(),
        1,
        "{a} {b}"
    );
}

/// The session's lifetime is absolute: refreshing does not extend it.
#[tokio::test]
async fn session_lifetime_is_absolute() {
    let app = TestApp::spawn_with(|c| c.tokens.session_ttl_seconds = 2).await;
    let r = app.sign_up(PHONE, PASSWORD).await;
    let t = r["refreshToken"].as_str().unwrap().to_owned();
    let n = app.gql(REFRESH, json!({ "t": t })).await;
    let t2 = n["data"]["refreshToken"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_code(&app.gql(REFRESH, json!({ "t": t2 })).await, "INVALID_TOKEN");
    let access = r["accessToken"].as_str().unwrap();
    assert!(
        app.me(Some(access)).await["data"]["me"].is_null(),
        "an expired session has no me"
    );
}

/// logout(allSessions: true) revokes every session of the user, at once.
#[tokio::test]
async fn logout_all_sessions() {
    let app = TestApp::spawn().await;
    let r = app.sign_up(PHONE, PASSWORD).await;
    let a = r["accessToken"].as_str().unwrap().to_owned();
    let b = app.login(PHONE, PASSWORD).await["data"]["login"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = app.login(PHONE, PASSWORD).await["data"]["login"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = app
        .gql_with(
            Some(&a),
            "mutation { logout(allSessions: true) { revokedSessions } }",
            json!({}),
        )
        .await;
    assert_eq!(out["data"]["logout"]["revokedSessions"], 3, "{out}");
    for t in [&a, &b, &c] {
        assert!(app.me(Some(t)).await["data"]["me"].is_null());
    }
    let refresh = r["refreshToken"].as_str().unwrap();
    assert_code(&app.gql(REFRESH, json!({ "t": refresh })).await, "INVALID_TOKEN");
}

/// A plain logout ends only its own session.
#[tokio::test]
async fn logout_one_session() {
    let app = TestApp::spawn().await;
    let a = app.sign_up(PHONE, PASSWORD).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = app.login(PHONE, PASSWORD).await["data"]["login"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = app
        .gql_with(Some(&a), "mutation { logout { revokedSessions } }", json!({}))
        .await;
    assert_eq!(out["data"]["logout"]["revokedSessions"], 1);
    assert!(app.me(Some(&a)).await["data"]["me"].is_null());
    assert_eq!(app.me(Some(&b)).await["data"]["me"]["phone"], PHONE);
    assert_code(
        &app.gql_with(Some(&a), "mutation { logout { revokedSessions } }", json!({}))
            .await,
        "UNAUTHENTICATED",
    );
}

/// Ended sessions are purged a day after they end; live ones stay.
#[tokio::test]
async fn ended_sessions_are_purged() {
    crate::real_stores_only!("back-dates rows in PostgreSQL to age them");
    let app = TestApp::spawn().await;
    let a = app.sign_up(PHONE, PASSWORD).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    app.login(PHONE, PASSWORD).await;
    app.gql_with(Some(&a), "mutation { logout { revokedSessions } }", json!({}))
        .await;
    assert_eq!(
        app.auth.purge_expired_sessions().await.unwrap(),
        0,
        "ended less than a day ago"
    );
    sqlx::query("update sessions set revoked_at = now() - interval '2 days' where revoked_at is not null")
        .execute(app.pg())
        .await
        .unwrap();
    assert_eq!(app.auth.purge_expired_sessions().await.unwrap(), 1);
    let left: i64 = sqlx::query_scalar("select count(*) from sessions")
        .fetch_one(app.pg())
        .await
        .unwrap();
    assert_eq!(left, 1, "the live session stays");
}
