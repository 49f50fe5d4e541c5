//! GraphiQL served by us (src/http/graphiql.rs): the page's policy and headers, every asset it names (bytes,
//! type, caching, gzip), and the GRAPHIQL setting. tests/browser runs the page in Chromium.

use std::path::PathBuf;

use crate::helpers::TestApp;

/// The committed file an asset URL serves: assets/graphiql/<name> or assets/graphiql/<package>/<name>.
fn committed(name: &str) -> Vec<u8> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/graphiql");
    let mut candidates = vec![dir.join(name)];
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            candidates.push(path.join(name));
        }
    }
    let found = candidates.into_iter().find(|p| p.is_file());
    std::fs::read(found.unwrap_or_else(|| panic!("no committed file {name}"))).unwrap()
}

/// The `/graphiql/...` URLs the page names, in order.
fn asset_paths(page: &str) -> Vec<String> {
    page.split('"')
        .filter(|s| s.starts_with("/graphiql/"))
        .map(str::to_owned)
        .collect()
}

async fn page(app: &TestApp) -> reqwest::Response {
    app.client.get(app.url("/graphql")).send().await.unwrap()
}

#[tokio::test]
async fn the_page_runs_under_a_strict_policy_with_a_fresh_nonce() {
    let app = TestApp::spawn().await;
    let first = page(&app).await;
    assert_eq!(first.status(), 200);
    let h = first.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
    let csp = h["content-security-policy"].to_str().unwrap().to_owned();
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no nonce in {csp}"));
    assert_eq!(
        csp,
        format!(
            "default-src 'self'; style-src 'self' 'nonce-{nonce}'; font-src 'self' data:; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
        )
    );
    assert!(nonce.len() >= 22, "16 random bytes: {nonce}");
    let body = first.text().await.unwrap();
    assert!(
        body.contains(&format!("nonce=\"{nonce}\"")),
        "the page carries the policy's nonce"
    );
    assert!(!body.contains("<script>") && !body.contains("<style") && !body.contains("https://"));

    let second = page(&app).await;
    let again = second.headers()["content-security-policy"].to_str().unwrap();
    assert!(!again.contains(nonce), "each response has its own nonce");
}

#[tokio::test]
async fn every_asset_is_ours_immutable_and_gzipped_when_accepted() {
    let app = TestApp::spawn().await;
    let paths = asset_paths(&page(&app).await.text().await.unwrap());
    let names: Vec<&str> = paths.iter().map(|p| p.rsplit('/').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "favicon.svg",
            "graphiql.min.css",
            "graphiql-page.css",
            "react.production.min.js",
            "react-dom.production.min.js",
            "graphiql.min.js",
            "graphiql-init.js",
        ]
    );
    let vendored = [
        "graphiql.min.css",
        "react.production.min.js",
        "react-dom.production.min.js",
        "graphiql.min.js",
    ];
    for (path, name) in paths.iter().zip(&names) {
        // reqwest is built without gzip: it sends no Accept-Encoding, and gets the file as it is.
        let plain = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(plain.status(), 200, "{path}");
        let h = plain.headers().clone();
        let content_type = match name.rsplit('.').next().unwrap() {
            "js" => "text/javascript; charset=utf-8",
            "css" => "text/css; charset=utf-8",
            _ => "image/svg+xml",
        };
        assert_eq!(h["content-type"], content_type, "{path}");
        assert_eq!(
            h["cache-control"], "public, max-age=31536000, immutable",
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert!(h.get("content-encoding").is_none(), "{path}");
        assert_eq!(plain.bytes().await.unwrap().as_ref(), committed(name), "{path}");

        let gz = app
            .client
            .get(app.url(path))
            .header("accept-encoding", "br, gzip;q=0.9")
            .send()
            .await
            .unwrap();
        let h = gz.headers().clone();
        if vendored.contains(name) {
            assert_eq!(h["content-encoding"], "gzip", "{path}");
            assert_eq!(h["vary"], "accept-encoding", "{path}");
            let body = gz.bytes().await.unwrap();
            assert_eq!(body.as_ref(), committed(&format!("{name}.gz")), "{path}");
            assert!(body.len() < committed(name).len(), "{path}");
        } else {
            assert!(h.get("content-encoding").is_none(), "ours go as they are: {path}");
        }
    }

    // A name under another hash (an old URL after an upgrade) or an unknown name is not found.
    let (hash, name) = paths[1].trim_start_matches("/graphiql/").split_once('/').unwrap();
    let other = if hash.starts_with('0') { '1' } else { '0' };
    let old = format!("/graphiql/{other}{}/{name}", &hash[1..]);
    for path in [
        old.as_str(),
        "/graphiql/000000000000/graphiql.min.js",
        "/graphiql/x/y",
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn graphiql_setting_turns_the_page_and_its_assets_on_and_off() {
    let on = TestApp::spawn().await;
    let assets = asset_paths(&page(&on).await.text().await.unwrap());

    let off = TestApp::spawn_with(|c| c.http.graphiql = Some(false)).await;
    let r = page(&off).await;
    assert_eq!(r.status(), 400, "GRAPHIQL=false: GET /graphql wants ?query=");
    for path in &assets {
        let r = off.client.get(off.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "GRAPHIQL=false: {path}");
    }

    crate::real_stores_only!("APP_ENV=production refuses the embedded backend (the part before ran on it)");
    let production = |graphiql: Option<bool>| {
        move |c: &mut phone_auth::config::Config| {
            c.app_env = phone_auth::config::AppEnv::Production;
            c.tokens.jwt_issuer = Some("https://auth.example.com".into());
            c.http.graphiql = graphiql;
            c.tokens.jwt_signing_keys = Some(
                phone_auth::services::tokens::SigningKey::generate()
                    .unwrap()
                    .to_config()
                    .into(),
            );
        }
    };
    let default = TestApp::spawn_with(production(None)).await;
    assert_eq!(page(&default).await.status(), 400, "off in production by default");
    let r = default.client.get(default.url(&assets[0])).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let asked = TestApp::spawn_with(production(Some(true))).await;
    let r = page(&asked).await;
    assert_eq!(r.status(), 200, "GRAPHIQL=true in production");
    assert!(r.headers().contains_key("content-security-policy"));
    let r = asked.client.get(asked.url(&assets[0])).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
