use serde_json::{Value, json};

use crate::helpers::*;

const ENTITIES: &str =
    r#"query($r: [_Any!]!) { _entities(representations: $r) { ... on User { id firstName phone } } }"#;
const ENTITIES_NO_PHONE: &str =
    r#"query($r: [_Any!]!) { _entities(representations: $r) { ... on User { id firstName } } }"#;

fn reps(id: &Value) -> Value {
    json!({ "r": [{ "__typename": "User", "id": id }] })
}

/// `_service { sdl }` is the federation SDL, the same as the committed schema.graphql.
#[tokio::test]
async fn service_sdl_is_the_committed_schema() {
    let app = TestApp::spawn().await;
    let v = app.gql("{ _service { sdl } }", json!({})).await;
    let sdl = v["data"]["_service"]["sdl"].as_str().expect("sdl");
    assert!(sdl.contains(r#"type User @key(fields: "id")"#), "{sdl}");
    assert!(sdl.contains("@link"), "federation v2 link");
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    assert_eq!(sdl.trim_end(), committed.trim_end());
}

/// Entities resolve by id for anyone, but the phone only for the user themself: null (not an error)
/// for anyone else, so the rest of the response survives.
#[tokio::test]
async fn entities_never_show_another_users_phone() {
    let app = TestApp::spawn().await;
    let ada = app.sign_up(PHONE, PASSWORD).await;
    let bob = app.sign_up("+16502530001", PASSWORD).await;
    let ada_id = &ada["user"]["id"];
    let ada_token = ada["accessToken"].as_str().unwrap();
    let bob_token = bob["accessToken"].as_str().unwrap();

    // Anyone may resolve the entity without the phone.
    let v = app.gql(ENTITIES_NO_PHONE, reps(ada_id)).await;
    assert_eq!(v["data"]["_entities"][0]["firstName"], "Ada", "{v}");

    // Asking for the phone: anonymous and other users get null, no error, and the names still.
    for token in [None, Some(bob_token), Some("garbage")] {
        let v = app.gql_with(token, ENTITIES, reps(ada_id)).await;
        assert!(v["errors"].is_null(), "{v}");
        assert_eq!(
            v["data"]["_entities"][0],
            json!({ "id": ada_id, "firstName": "Ada", "phone": null })
        );
        assert!(!v.to_string().contains(PHONE), "{v}");
    }
    // The user themself sees it.
    let v = app.gql_with(Some(ada_token), ENTITIES, reps(ada_id)).await;
    assert_eq!(v["data"]["_entities"][0]["phone"], PHONE, "{v}");

    // After logout the token no longer shows it.
    app.gql_with(
        Some(ada_token),
        "mutation { logout { revokedSessions } }",
        json!({}),
    )
    .await;
    let v = app.gql_with(Some(ada_token), ENTITIES, reps(ada_id)).await;
    assert!(v["errors"].is_null(), "{v}");
    assert!(v["data"]["_entities"][0]["phone"].is_null(), "{v}");

    // Unknown and malformed ids are null, not errors.
    for id in [json!("00000000-0000-0000-0000-000000000000"), json!("not-a-uuid")] {
        let v = app.gql(ENTITIES_NO_PHONE, reps(&id)).await;
        assert!(v["data"]["_entities"][0].is_null(), "{v}");
    }
}

/// Every statement that read the `users` table since the last reset, with its calls (pg_stat_statements
/// of the private server; the viewer's session lookup joins `users` too and is listed as well).
async fn user_statements(pg: &sqlx::PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select query, calls from pg_stat_statements
         where dbid = (select oid from pg_database where datname = current_database())
           and query ilike '%users%' and query not ilike '%pg_stat_statements%'
         order by query",
    )
    .fetch_all(pg)
    .await
    .unwrap()
}

/// 500 representations (the viewer, another user, duplicates, unknown and malformed ids) are loaded
/// by ONE SQL statement, counted by pg_stat_statements on a private PostgreSQL; the session lookup for
/// "is this the viewer" is one statement too. 10,000 are refused before any statement.
#[tokio::test]
async fn entities_are_loaded_with_one_statement_and_capped() {
    crate::real_stores_only!("counts SQL statements with pg_stat_statements on a private PostgreSQL");
    let pg = crate::private_pg::PrivatePg::start();
    let url = pg.url("phone_auth");
    let app = TestApp::spawn_with(|c| {
        c.stores.database_url = Some(url.into());
        // 10,000 representations are about 500 KB: let them reach the cap, not the body limit.
        c.http.max_body_bytes = 2 << 20;
    })
    .await;
    let ada = app.sign_up(PHONE, PASSWORD).await;
    let bob = app.sign_up("+16502530001", PASSWORD).await;
    let ada_id = ada["user"]["id"].as_str().unwrap().to_owned();
    let bob_id = bob["user"]["id"].as_str().unwrap().to_owned();
    let token = ada["accessToken"].as_str().unwrap();
    sqlx::query("create extension if not exists pg_stat_statements")
        .execute(app.pg())
        .await
        .unwrap();

    let unknown = uuid::Uuid::new_v4().to_string();
    let mut representations = Vec::new();
    for i in 0..500 {
        let id = match i % 5 {
            0 => ada_id.clone(),
            1 => bob_id.clone(),
            2 => unknown.clone(),
            3 => format!("not-a-uuid-{i}"),
            _ => uuid::Uuid::new_v4().to_string(),
        };
        representations.push(json!({ "__typename": "User", "id": id }));
    }
    sqlx::query("select pg_stat_statements_reset()")
        .execute(app.pg())
        .await
        .unwrap();
    let v = app
        .gql_with(Some(token), ENTITIES, json!({ "r": representations }))
        .await;
    assert!(v["errors"].is_null(), "{v}");
    let entities = v["data"]["_entities"].as_array().unwrap();
    assert_eq!(entities.len(), 500);
    for (i, e) in entities.iter().enumerate() {
        match i % 5 {
            0 => assert_eq!(*e, json!({ "id": ada_id, "firstName": "Ada", "phone": PHONE })),
            1 => assert_eq!(*e, json!({ "id": bob_id, "firstName": "Ada", "phone": null })),
            _ => assert!(e.is_null(), "{i}: {e}"),
        }
    }
    let statements = user_statements(app.pg()).await;
    let calls: Vec<i64> = statements.iter().map(|(_, c)| *c).collect();
    assert_eq!(calls, [1, 1], "one batch and one session lookup: {statements:#?}");
    assert!(
        statements.iter().any(|(q, _)| q.contains("where id = any($1)")),
        "{statements:#?}"
    );

    // Over the cap: refused before any statement.
    let many: Vec<Value> = (0..10_000)
        .map(|_| json!({ "__typename": "User", "id": ada_id }))
        .collect();
    sqlx::query("select pg_stat_statements_reset()")
        .execute(app.pg())
        .await
        .unwrap();
    let v = app.gql(ENTITIES_NO_PHONE, json!({ "r": many })).await;
    assert_code(&v, "QUERY_LIMIT_EXCEEDED");
    assert_eq!(v["errors"][0]["extensions"]["limit"], "representations", "{v}");
    assert_eq!(v["errors"][0]["extensions"]["max"], 1000, "{v}");
    assert!(v["data"].is_null(), "{v}");
    assert_eq!(user_statements(app.pg()).await, []);
}

/// Several configured keys: all are published with their kid, the first signs.
#[tokio::test]
async fn jwks_publishes_every_configured_key() {
    let new = phone_auth::services::tokens::SigningKey::generate()
        .unwrap()
        .to_config();
    let old = phone_auth::services::tokens::SigningKey::generate()
        .unwrap()
        .to_config();
    let spec = format!("{new},{old}");
    let app = TestApp::spawn_with(|c| c.tokens.jwt_signing_keys = Some(spec.into())).await;
    let jwks: Value = app.get_json("/.well-known/jwks.json").await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    let new_kid = new.split(':').next().unwrap();
    let old_kid = old.split(':').next().unwrap();
    assert_eq!(kids, [new_kid, old_kid]);
    for k in jwks["keys"].as_array().unwrap() {
        assert_eq!(k["kty"], "OKP");
        assert_eq!(k["crv"], "Ed25519");
        assert_eq!(k["alg"], "EdDSA");
        assert_eq!(k["use"], "sig");
        assert!(k.get("d").is_none(), "no private part published");
    }
    let token = app.sign_up(PHONE, PASSWORD).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], new_kid, "the newest key signs");
}

/// Rotation step 1 (README "Behind a gateway"): a JWT_NEXT_KEYS key is in the JWKS before it signs,
/// tokens are still signed with the first signing key, a token signed by the next key is accepted (the
/// instances that moved to step 2 sign with it), and a kid in both lists stops the start.
#[tokio::test]
async fn next_key_is_published_before_it_signs() {
    use phone_auth::services::tokens::{SigningKey, TokenService};
    let current = SigningKey::generate().unwrap().to_config();
    let next = SigningKey::generate().unwrap().to_config();
    let (current_spec, next_spec) = (current.clone(), next.clone());
    let app = TestApp::spawn_with(|c| {
        c.tokens.jwt_signing_keys = Some(current_spec.into());
        c.tokens.jwt_next_keys = Some(next_spec.into());
    })
    .await;
    let jwks: Value = app.get_json("/.well-known/jwks.json").await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    let current_kid = current.split(':').next().unwrap();
    let next_kid = next.split(':').next().unwrap();
    assert_eq!(kids, [current_kid, next_kid]);

    let token = app.sign_up(PHONE, PASSWORD).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let segment = |i: usize| -> Value {
        serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token.split('.').nth(i).unwrap(),
            )
            .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(segment(0)["kid"], current_kid, "the first signing key signs");

    // The same session's token, forged with the next key, as an instance in step 2 would sign it.
    let claims = segment(1);
    let sign_with = |spec: &str| {
        TokenService::new(
            &SigningKey::parse_list(&spec.to_owned().into()).unwrap(),
            claims["iss"].as_str().unwrap().to_owned(),
            claims["aud"].as_str().unwrap().to_owned(),
            claims["client_id"].as_str().unwrap().to_owned(),
            900,
        )
        .unwrap()
        .issue(
            claims["sub"].as_str().unwrap().parse().unwrap(),
            claims["sid"].as_str().unwrap().parse().unwrap(),
            u64::MAX,
        )
        .unwrap()
        .token
    };
    let by_next = sign_with(&next);
    let me = app.me(Some(&by_next)).await;
    assert_eq!(me["data"]["me"]["id"], claims["sub"], "{me}");
    let stranger = sign_with(&SigningKey::generate().unwrap().to_config());
    let me = app.me(Some(&stranger)).await;
    assert!(me["data"]["me"].is_null(), "{me}");

    let mut config = crate::helpers::test_config();
    if !crate::helpers::embedded() {
        // The stores are set in pairs; this start is refused before it connects to either.
        config.stores.database_url = Some(app.database_url().into());
    }
    config.tokens.jwt_signing_keys = Some(current.clone().into());
    config.tokens.jwt_next_keys = Some(format!("{next},{current}").into());
    let sender = std::sync::Arc::new(phone_auth::services::sms::TestSender::default());
    let Err(refused) = phone_auth::app::build(&config, Some(sender)).await else {
        panic!("started with a kid in both lists");
    };
    assert!(refused.to_string().contains("JWT_NEXT_KEYS"), "{refused}");
}
