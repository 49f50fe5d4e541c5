//! GraphiQL, served by us: the page at GET /graphql (in a browser) and its assets under /graphiql/,
//! embedded in the binary, so it works offline and under a strict Content-Security-Policy.
//!
//! The third-party files (graphiql, react and react-dom, at the versions the script pins) come from the
//! npm registry through `scripts/fetch-graphiql-assets`, which checks them against
//! `assets/graphiql/SHA256SUMS` and writes a `gzip -9 -n` copy of each. Each asset's URL carries the first 12 hex digits of its SHA-256, so a
//! browser may cache it forever (`immutable`), and an upgrade or an edit of our own files is a new URL.
//!
//! Compression: the gzip copies are made once, when the assets are fetched, rather than by
//! tower-http's `CompressionLayer` (feature `compression-gzip`) on each request: no new crates
//! (async-compression, flate2), no CPU spent per request on a machine whose CPU goes to password
//! hashing, and the bytes sent are the bytes committed.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRng;
use sha2::{Digest, Sha256};

/// The page's policy: `default-src 'self'` and only what GraphiQL itself was found to need in Chromium
/// (its editors, completion, a lint tooltip, the docs and the dialogs were tried; tests/browser fails
/// on any violation while it runs a query and opens the settings dialog):
///
/// - `font-src 'self' data:`: graphiql.min.css carries its fonts (Roboto, Fira Code) as `data:` URLs
///   inside the stylesheet; nothing is fetched. (Its two `data:` PNGs, CodeMirror lint icons, are
///   overridden by GraphiQL's own rules and never load: no `img-src data:`.)
/// - `style-src 'self' 'nonce-…'`: a dialog (settings, shortcuts) locks the page's scrolling with a
///   `<style>` element that react-remove-scroll (inside graphiql.min.js) writes. It takes its nonce from
///   the global `__webpack_nonce__`, which graphiql-init.js sets from its own script tag. The nonce is
///   new for each response, so only GraphiQL's own code can add a style; not `'unsafe-inline'`.
///
/// The rest only takes away (`default-src` does not cover these): `frame-ancestors 'none'`, no other
/// site may frame the page (clickjacking a headers editor that holds a token); `base-uri 'none'` and
/// `form-action 'none'`, no injected `<base>` or form can point elsewhere.
fn content_security_policy(nonce: &str) -> String {
    format!(
        "default-src 'self'; style-src 'self' 'nonce-{nonce}'; font-src 'self' data:; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
}

/// Where the page carries its nonce (replaced per response).
const NONCE: &str = "{nonce}";

/// What an asset is to the page: how it is named there, and its content type.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Icon,
    Stylesheet,
    Script,
}

impl Kind {
    fn content_type(self) -> &'static str {
        match self {
            Kind::Icon => "image/svg+xml",
            Kind::Stylesheet => "text/css; charset=utf-8",
            Kind::Script => "text/javascript; charset=utf-8",
        }
    }
}

/// Our own script, the one that starts GraphiQL: its tag carries the nonce.
const INIT_SCRIPT: &str = "graphiql-init.js";

struct Asset {
    name: &'static str,
    kind: Kind,
    raw: &'static [u8],
    /// The same bytes gzipped (third-party files; ours are a few hundred bytes and go as they are).
    gzip: Option<&'static [u8]>,
}

macro_rules! vendored {
    ($dir:literal, $name:literal, $kind:expr) => {
        Asset {
            name: $name,
            kind: $kind,
            raw: include_bytes!(concat!("../../assets/graphiql/", $dir, "/", $name)),
            gzip: Some(include_bytes!(concat!(
                "../../assets/graphiql/",
                $dir,
                "/",
                $name,
                ".gz"
            ))),
        }
    };
}

/// In the order the page names them.
static ASSETS: [Asset; 7] = [
    // Ours too: without an icon the browser asks for /favicon.ico (a 404 in the console), and an empty
    // `data:,` icon would need `img-src data:`.
    Asset {
        name: "favicon.svg",
        kind: Kind::Icon,
        raw: include_bytes!("../../assets/graphiql/favicon.svg"),
        gzip: None,
    },
    vendored!("graphiql", "graphiql.min.css", Kind::Stylesheet),
    Asset {
        name: "graphiql-page.css",
        kind: Kind::Stylesheet,
        raw: include_bytes!("../../assets/graphiql/graphiql-page.css"),
        gzip: None,
    },
    vendored!("react", "react.production.min.js", Kind::Script),
    vendored!("react-dom", "react-dom.production.min.js", Kind::Script),
    vendored!("graphiql", "graphiql.min.js", Kind::Script),
    Asset {
        name: INIT_SCRIPT,
        kind: Kind::Script,
        raw: include_bytes!("../../assets/graphiql/graphiql-init.js"),
        gzip: None,
    },
];

/// Each asset's URL path, `/graphiql/<first 12 hex digits of its SHA-256>/<name>`. Computed on the
/// first GraphiQL request, not at start: the integration tests start many servers that never show it.
static PATHS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.raw);
            let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
            format!("/graphiql/{hex}/{}", a.name)
        })
        .collect()
});

static PAGE: LazyLock<String> = LazyLock::new(|| {
    let mut head = String::new();
    for (asset, path) in ASSETS.iter().zip(PATHS.iter()) {
        let tag = match asset.kind {
            Kind::Icon => format!("<link rel=\"icon\" href=\"{path}\">"),
            Kind::Stylesheet => format!("<link rel=\"stylesheet\" href=\"{path}\">"),
            // graphiql-init.js reads the style nonce from its own tag (a nonce attribute is hidden
            // from the DOM, not from `document.currentScript.nonce`).
            Kind::Script if asset.name == INIT_SCRIPT => {
                format!("<script defer nonce=\"{NONCE}\" src=\"{path}\"></script>")
            }
            // `defer`: run in document order once the page is parsed.
            Kind::Script => format!("<script defer src=\"{path}\"></script>"),
        };
        head.push_str(&format!("  {tag}\n"));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n  <meta charset=\"utf-8\">\n  \
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n  \
         <title>phone-auth GraphiQL</title>\n{head}</head>\n<body>\n  \
         <div id=\"graphiql\">Loading GraphiQL...<noscript> It needs JavaScript.</noscript></div>\n\
         </body>\n</html>\n"
    )
});

/// The asset routes when GraphiQL is on; none when it is off (then /graphiql/ is a 404 like any
/// unknown path).
pub fn routes<S: Clone + Send + Sync + 'static>(enabled: bool) -> Router<S> {
    let router = Router::new();
    if enabled {
        router.route("/graphiql/{hash}/{name}", get(asset))
    } else {
        router
    }
}

/// The GraphiQL page, with a fresh style nonce.
pub fn page() -> Response {
    let mut bytes = [0u8; 16];
    if let Err(e) = rand::rngs::SysRng.try_fill_bytes(&mut bytes) {
        tracing::error!(error = %e, "os rng failed: cannot make a CSP nonce");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let nonce = URL_SAFE_NO_PAD.encode(bytes);
    let Ok(csp) = HeaderValue::from_str(&content_security_policy(&nonce)) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, csp),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            // It carries a one-time nonce: never kept, asked again on every visit.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        PAGE.replace(NONCE, &nonce),
    )
        .into_response()
}

async fn asset(Path((hash, name)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let wanted = format!("/graphiql/{hash}/{name}");
    let Some(asset) = PATHS.iter().position(|p| *p == wanted).map(|i| &ASSETS[i]) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (body, gzipped) = match asset.gzip {
        Some(gz) if accepts_gzip(&headers) => (gz, true),
        _ => (asset.raw, false),
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, asset.kind.content_type()),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            // Scripts and styles are run only when served as such, never sniffed.
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response();
    let h = response.headers_mut();
    if asset.gzip.is_some() {
        // A cache in between keeps the two encodings apart.
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if gzipped {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// Whether `Accept-Encoding` allows gzip: listed (or `*`) with a q-value above 0 (RFC 9110 12.5.3); an
/// explicit `gzip` entry wins over `*`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    let entries = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for entry in entries {
        let mut parts = entry.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0));
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q > 0.0);
        } else if coding == "*" {
            any = Some(q > 0.0);
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).expect("header value"),
        );
        h
    }

    #[test]
    fn gzip_only_when_accepted() {
        assert!(accepts_gzip(&accept("gzip, deflate, br, zstd")));
        assert!(accepts_gzip(&accept("br;q=1.0, gzip;q=0.8")));
        assert!(accepts_gzip(&accept("*")));
        assert!(accepts_gzip(&accept("GZIP")));
        assert!(!accepts_gzip(&HeaderMap::new()));
        assert!(!accepts_gzip(&accept("identity")));
        assert!(!accepts_gzip(&accept("br")));
        assert!(!accepts_gzip(&accept("gzip;q=0")));
        assert!(!accepts_gzip(&accept("gzip;q=0, *")));
        assert!(!accepts_gzip(&accept("*;q=0")));
    }

    /// The embedded third-party files are the ones the manifest lists, byte for byte.
    #[test]
    fn embedded_assets_match_the_manifest() {
        let manifest = include_str!("../../assets/graphiql/SHA256SUMS");
        let listed: Vec<(&str, &str)> = manifest
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_once("  "))
            .collect();
        let mut checked = 0;
        for asset in ASSETS.iter().filter(|a| a.gzip.is_some()) {
            let (sum, _) = listed
                .iter()
                .find(|(_, path)| path.rsplit('/').next() == Some(asset.name))
                .unwrap_or_else(|| panic!("{} is not in SHA256SUMS", asset.name));
            let digest: String = Sha256::digest(asset.raw)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(&digest, sum, "{} differs from SHA256SUMS", asset.name);
            checked += 1;
        }
        assert_eq!(checked, 4);
    }

    #[test]
    fn the_page_names_every_asset_and_nothing_inline() {
        let page = PAGE.as_str();
        for path in PATHS.iter() {
            assert!(page.contains(&format!("\"{path}\"")), "{path} is not on the page");
        }
        assert!(!page.contains("<script>") && !page.contains("<style") && !page.contains("style="));
        assert!(!page.contains("http"), "the page names no other origin");
    }
}
