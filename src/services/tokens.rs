//! Access tokens: JWTs signed with Ed25519 (EdDSA), short-lived (900 s), carrying the claims RFC 9068
//! section 2.2 requires (iss, exp, aud, sub = user id, client_id, iat, jti) plus sid (session id), and
//! nothing personal (no phone). A token never outlives its session: `exp` is the sooner of
//! `iat + ttl` and the session's absolute end. Tokens of a sign-in also carry `auth_time` and `amr`
//! (RFC 9068 2.2.1; methods named per RFC 8176), the sign-in's time and method, kept across refreshes:
//! other services can ask for a recent sign-in without calling us.
//!
//! Keys come from configuration as `kid:seed` pairs. JWT_SIGNING_KEYS, newest first: the first signs,
//! all verify. JWT_NEXT_KEYS: published and accepted, never used to sign. All are published as a JWKS
//! so that gateways and other services verify tokens without calling us; they cache it (we say for
//! `discovery::JWKS_MAX_AGE_SECONDS`, 300 s), so a key must be published that long before it signs, or
//! they refuse the tokens it signs until their cache expires. Rotation is therefore three steps: add
//! the new key to JWT_NEXT_KEYS and wait at least the JWKS cache time; move it first in
//! JWT_SIGNING_KEYS (the old one after it, still accepted) and wait at least one access-token lifetime;
//! drop the old key. A next key is accepted as well as published: while step 2 rolls across instances,
//! the updated ones sign with it and the others must accept what they sign.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{AppError, AppResult};
use crate::random::random_bytes;

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410 section 7); the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Our tokens are about 350 bytes; a header of several kilobytes is not one and is not parsed.
const MAX_TOKEN_BYTES: usize = 2048;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    /// RFC 9068 2.2 (REQUIRED): the client the token was issued to (`JWT_CLIENT_ID`).
    pub client_id: String,
    /// RFC 9068 2.2 (REQUIRED), RFC 7519 4.1.7: unique per token (a random UUID), so a verifier can
    /// detect a replayed token or keep a deny-list.
    pub jti: String,
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
}

/// A signed access token and how long it lives.
pub struct Issued {
    pub token: String,
    pub expires_in_seconds: u64,
}

/// `Claims` plus when and how the session was signed in (absent for a session that predates them).
#[derive(Serialize)]
struct AuthenticatedClaims<'a> {
    #[serde(flatten)]
    base: Claims,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    amr: Option<&'a [String]>,
}

pub struct VerifiedToken {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

pub struct TokenService {
    signing_kid: String,
    signing_key: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    jwks: JwkSet,
    issuer: String,
    audience: String,
    client_id: String,
    ttl_seconds: u64,
    validation: Validation,
}

pub struct SigningKey {
    pub kid: String,
    seed: [u8; 32],
}

impl SigningKey {
    /// Parses JWT_SIGNING_KEYS, `kid:seed,kid:seed` (seed: 32 bytes, base64url or base64); at least one.
    pub fn parse_list(spec: &SecretString) -> anyhow::Result<Vec<SigningKey>> {
        let keys = Self::parse_setting("JWT_SIGNING_KEYS", spec)?;
        if keys.is_empty() {
            anyhow::bail!("JWT_SIGNING_KEYS is empty");
        }
        Ok(keys)
    }

    /// Parses JWT_NEXT_KEYS, same form; may be empty (no rotation under way).
    pub fn parse_next(spec: &SecretString) -> anyhow::Result<Vec<SigningKey>> {
        Self::parse_setting("JWT_NEXT_KEYS", spec)
    }

    fn parse_setting(name: &str, spec: &SecretString) -> anyhow::Result<Vec<SigningKey>> {
        let mut keys = Vec::new();
        for item in spec
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (kid, seed) = item
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("{name}: each key is kid:base64url-seed"))?;
            let bytes = URL_SAFE_NO_PAD
                .decode(seed.trim_end_matches('='))
                .or_else(|_| URL_SAFE.decode(seed))
                .or_else(|_| base64::engine::general_purpose::STANDARD.decode(seed))
                .map_err(|_| anyhow::anyhow!("{name}: key {kid:?} is not base64"))?;
            let seed: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{name}: key {kid:?} must be 32 bytes"))?;
            if kid.is_empty() || keys.iter().any(|k: &SigningKey| k.kid == kid) {
                anyhow::bail!("{name}: key ids must be non-empty and distinct");
            }
            keys.push(SigningKey {
                kid: kid.to_owned(),
                seed,
            });
        }
        Ok(keys)
    }

    /// A fresh random key (development only: tokens do not survive a restart).
    pub fn generate() -> anyhow::Result<SigningKey> {
        Ok(SigningKey {
            kid: format!("dev-{}", hex::encode(random_bytes::<4>()?)),
            seed: random_bytes::<32>()?,
        })
    }

    /// `kid:seed` text of this key, for printing a generated key into configuration.
    pub fn to_config(&self) -> String {
        format!("{}:{}", self.kid, URL_SAFE_NO_PAD.encode(self.seed))
    }

    fn encoding_key(&self) -> EncodingKey {
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&ED25519_PKCS8_PREFIX);
        der.extend_from_slice(&self.seed);
        EncodingKey::from_ed_der(&der)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenService {
    pub fn new(
        keys: &[SigningKey],
        issuer: String,
        audience: String,
        client_id: String,
        ttl_seconds: u64,
    ) -> anyhow::Result<Self> {
        Self::with_next_keys(keys, &[], issuer, audience, client_id, ttl_seconds)
    }

    /// `keys` sign (the first) and verify; `next` are published and verify, and never sign. A kid in
    /// both lists is refused: a verifier could not tell which key a token names.
    pub fn with_next_keys(
        keys: &[SigningKey],
        next: &[SigningKey],
        issuer: String,
        audience: String,
        client_id: String,
        ttl_seconds: u64,
    ) -> anyhow::Result<Self> {
        if let Some(dup) = next.iter().find(|n| keys.iter().any(|k| k.kid == n.kid)) {
            anyhow::bail!(
                "JWT_NEXT_KEYS: key id {:?} is also in JWT_SIGNING_KEYS; once a next key signs, remove it \
                 from JWT_NEXT_KEYS",
                dup.kid
            );
        }
        let mut verifying = HashMap::new();
        let mut jwks = JwkSet { keys: Vec::new() };
        for key in keys.iter().chain(next) {
            let mut jwk = Jwk::from_encoding_key(&key.encoding_key(), Algorithm::EdDSA)
                .map_err(|e| anyhow::anyhow!("signing key {:?}: {e}", key.kid))?;
            jwk.common.key_id = Some(key.kid.clone());
            jwk.common.public_key_use = Some(PublicKeyUse::Signature);
            verifying.insert(
                key.kid.clone(),
                DecodingKey::from_jwk(&jwk).map_err(|e| anyhow::anyhow!("signing key {:?}: {e}", key.kid))?,
            );
            jwks.keys.push(jwk);
        }
        let first = keys.first().ok_or_else(|| anyhow::anyhow!("no signing key"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        // Clock skew allowed between us and other verifiers of our tokens.
        validation.leeway = 30;
        Ok(TokenService {
            signing_kid: first.kid.clone(),
            signing_key: first.encoding_key(),
            verifying,
            jwks,
            issuer,
            audience,
            client_id,
            ttl_seconds,
            validation,
        })
    }

    /// The public keys, as served at /.well-known/jwks.json.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    /// `session_ends`: the session's absolute end (unix seconds); the token expires then at the latest.
    pub fn issue(&self, user_id: Uuid, session_id: Uuid, session_ends: u64) -> AppResult<Issued> {
        self.sign(user_id, session_id, session_ends, None)
    }

    /// An access token of a session signed in at `auth_time` by `amr`: the claims of `issue` plus
    /// those two. One signing path, so the two kinds never drift apart.
    pub fn issue_for(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        session_ends: u64,
        auth: &crate::services::sessions::SessionAuth,
    ) -> AppResult<Issued> {
        self.sign(user_id, session_id, session_ends, Some(auth))
    }

    fn sign(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        session_ends: u64,
        auth: Option<&crate::services::sessions::SessionAuth>,
    ) -> AppResult<Issued> {
        let iat = now();
        let exp = (iat + self.ttl_seconds).min(session_ends);
        let claims = AuthenticatedClaims {
            base: Claims {
                iss: self.issuer.clone(),
                aud: self.audience.clone(),
                sub: user_id.to_string(),
                client_id: self.client_id.clone(),
                jti: Uuid::new_v4().to_string(),
                sid: session_id.to_string(),
                iat,
                exp,
            },
            auth_time: auth.map(|a| a.auth_time.unix_timestamp().max(0) as u64),
            amr: auth.map(|a| a.amr.as_slice()),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.signing_kid.clone());
        // RFC 9068: marks it an access token, so no other JWT signed with these keys can pass as one.
        header.typ = Some(ACCESS_TOKEN_TYP.into());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing_key)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("jwt encode: {e}")))?;
        Ok(Issued {
            token,
            expires_in_seconds: exp.saturating_sub(iat),
        })
    }

    /// Checks signature, algorithm, issuer, audience and expiry. Says nothing about revocation: the
    /// session store does.
    pub fn verify(&self, token: &str) -> AppResult<VerifiedToken> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AppError::InvalidToken);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AppError::InvalidToken)?;
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(AppError::InvalidToken);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(AppError::InvalidToken)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|_| AppError::InvalidToken)?;
        let user_id = Uuid::parse_str(&data.claims.sub).map_err(|_| AppError::InvalidToken)?;
        let session_id = Uuid::parse_str(&data.claims.sid).map_err(|_| AppError::InvalidToken)?;
        Ok(VerifiedToken { user_id, session_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(keys: &[&SigningKey]) -> TokenService {
        let keys: Vec<SigningKey> = keys
            .iter()
            .map(|k| SigningKey {
                kid: k.kid.clone(),
                seed: k.seed,
            })
            .collect();
        TokenService::new(&keys, "iss".into(), "aud".into(), "client".into(), 900).unwrap()
    }

    const FAR: u64 = u64::MAX;

    fn claims(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    /// RFC 9068 2.2: client_id and a unique jti; exp never past the session's end.
    #[test]
    fn claims_carry_client_id_and_a_unique_jti_and_stop_at_the_session_end() {
        let key = SigningKey::generate().unwrap();
        let tokens = service(&[&key]);
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        let a = tokens.issue(u, s, FAR).unwrap();
        let b = tokens.issue(u, s, FAR).unwrap();
        let (ca, cb) = (claims(&a.token), claims(&b.token));
        assert_eq!(ca["client_id"], "client");
        assert!(Uuid::parse_str(ca["jti"].as_str().unwrap()).is_ok(), "{ca}");
        assert_ne!(ca["jti"], cb["jti"], "jti is unique per token");
        assert_eq!(ca["exp"].as_u64().unwrap() - ca["iat"].as_u64().unwrap(), 900);
        assert_eq!(a.expires_in_seconds, 900);
        // A session that ends in 60 s: the token ends with it.
        let ends = now() + 60;
        let c = tokens.issue(u, s, ends).unwrap();
        assert_eq!(claims(&c.token)["exp"].as_u64().unwrap(), ends);
        assert!(
            (59..=60).contains(&c.expires_in_seconds),
            "{}",
            c.expires_in_seconds
        );
    }

    /// A sign-in's token: the claims of `issue` (client_id, jti, exp capped at the session's end)
    /// plus auth_time and amr; a plain `issue` has neither of the two.
    #[test]
    fn a_sign_in_token_carries_every_claim() {
        let key = SigningKey::generate().unwrap();
        let tokens = service(&[&key]);
        let auth = crate::services::sessions::SessionAuth::now(crate::services::sessions::Amr::Pwd);
        let ends = now() + 60;
        let t = tokens
            .issue_for(Uuid::new_v4(), Uuid::new_v4(), ends, &auth)
            .unwrap();
        let c = claims(&t.token);
        assert_eq!(c["client_id"], "client");
        assert!(Uuid::parse_str(c["jti"].as_str().unwrap()).is_ok(), "{c}");
        assert_eq!(c["exp"].as_u64().unwrap(), ends);
        assert_eq!(
            c["auth_time"].as_u64().unwrap(),
            auth.auth_time.unix_timestamp() as u64
        );
        assert_eq!(c["amr"], serde_json::json!(["pwd"]));
        assert!(tokens.verify(&t.token).is_ok());
        let plain = claims(&tokens.issue(Uuid::new_v4(), Uuid::new_v4(), FAR).unwrap().token);
        assert!(
            plain.get("auth_time").is_none() && plain.get("amr").is_none(),
            "{plain}"
        );
    }

    /// Rotation: a token signed with the previous key stays valid once a new key is put in front.
    #[test]
    fn token_of_the_previous_key_stays_valid_after_rotation() {
        let old = SigningKey::generate().unwrap();
        let new = SigningKey::generate().unwrap();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let before = service(&[&old]).issue(user, session, FAR).unwrap().token;
        let rotated = service(&[&new, &old]);
        let v = rotated.verify(&before).unwrap();
        assert_eq!((v.user_id, v.session_id), (user, session));
        let after = rotated.issue(user, session, FAR).unwrap().token;
        assert!(service(&[&new]).verify(&after).is_ok());
        // Once the old key is dropped its tokens are refused.
        assert!(service(&[&new]).verify(&before).is_err());
    }

    fn with_next(keys: &[&SigningKey], next: &[&SigningKey]) -> anyhow::Result<TokenService> {
        let copy = |keys: &[&SigningKey]| -> Vec<SigningKey> {
            keys.iter()
                .map(|k| SigningKey {
                    kid: k.kid.clone(),
                    seed: k.seed,
                })
                .collect()
        };
        TokenService::with_next_keys(
            &copy(keys),
            &copy(next),
            "iss".into(),
            "aud".into(),
            "client".into(),
            900,
        )
    }

    fn kid_of(token: &str) -> String {
        jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
    }

    /// Rotation step 1: a next key is published (after the signing keys) but does not sign.
    #[test]
    fn a_next_key_is_published_and_does_not_sign() {
        let current = SigningKey::generate().unwrap();
        let next = SigningKey::generate().unwrap();
        let s = with_next(&[&current], &[&next]).unwrap();
        let kids: Vec<_> = s
            .jwks()
            .keys
            .iter()
            .map(|k| k.common.key_id.clone().unwrap())
            .collect();
        assert_eq!(kids, [current.kid.clone(), next.kid.clone()]);
        let token = s.issue(Uuid::new_v4(), Uuid::new_v4(), u64::MAX).unwrap().token;
        assert_eq!(kid_of(&token), current.kid);
        assert!(s.verify(&token).is_ok());
    }

    /// A token signed by a next key (forged here with that key) is accepted as soon as the key is
    /// published: during step 2 the instances already updated sign with it, and the others, which
    /// still list it as next, must accept their tokens. A key in neither list is refused.
    #[test]
    fn a_token_signed_by_a_next_key_is_accepted() {
        let current = SigningKey::generate().unwrap();
        let next = SigningKey::generate().unwrap();
        let stranger = SigningKey::generate().unwrap();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let forged = service(&[&next]).issue(user, session, u64::MAX).unwrap().token;
        assert_eq!(kid_of(&forged), next.kid);
        let v = with_next(&[&current], &[&next]).unwrap().verify(&forged).unwrap();
        assert_eq!((v.user_id, v.session_id), (user, session));
        assert!(service(&[&current]).verify(&forged).is_err(), "not yet published");
        let other = service(&[&stranger])
            .issue(user, session, u64::MAX)
            .unwrap()
            .token;
        assert!(with_next(&[&current], &[&next]).unwrap().verify(&other).is_err());
    }

    #[test]
    fn a_kid_in_both_lists_is_refused() {
        let current = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let twin = SigningKey {
            kid: current.kid.clone(),
            seed: other.seed,
        };
        let err = with_next(&[&current], &[&other, &twin]).err().expect("refused");
        assert!(err.to_string().contains("JWT_NEXT_KEYS"), "{err}");
        let err = with_next(&[&current], &[&current]).err().expect("refused");
        assert!(err.to_string().contains(&current.kid), "{err}");
    }

    #[test]
    fn next_key_list_parsing() {
        assert!(
            SigningKey::parse_next(&SecretString::from(String::new()))
                .unwrap()
                .is_empty()
        );
        let k = SigningKey::generate().unwrap().to_config();
        assert_eq!(SigningKey::parse_next(&SecretString::from(k)).unwrap().len(), 1);
        let err = SigningKey::parse_next(&SecretString::from("a:short".to_owned()))
            .err()
            .unwrap();
        assert!(err.to_string().starts_with("JWT_NEXT_KEYS"), "{err}");
    }

    #[test]
    fn wrong_issuer_audience_or_algorithm_is_refused() {
        let key = SigningKey::generate().unwrap();
        let ours = service(&[&key]);
        let keys = [SigningKey {
            kid: key.kid.clone(),
            seed: key.seed,
        }];
        let other_aud = TokenService::new(&keys, "iss".into(), "other".into(), "c".into(), 900).unwrap();
        let other_iss = TokenService::new(&keys, "other".into(), "aud".into(), "c".into(), 900).unwrap();
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(ours.verify(&other_aud.issue(u, s, FAR).unwrap().token).is_err());
        assert!(ours.verify(&other_iss.issue(u, s, FAR).unwrap().token).is_err());
        // alg=none with our kid.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid)),
            URL_SAFE_NO_PAD.encode(format!(
                r#"{{"iss":"iss","aud":"aud","sub":"{u}","sid":"{s}","iat":1,"exp":99999999999}}"#
            ))
        );
        assert!(ours.verify(&none).is_err());
    }

    #[test]
    fn key_list_parsing() {
        let k = SigningKey::generate().unwrap().to_config();
        assert_eq!(
            SigningKey::parse_list(&SecretString::from(k.clone()))
                .unwrap()
                .len(),
            1
        );
        for bad in ["", "nokid", "a:short", &format!("{k},{k}")] {
            assert!(
                SigningKey::parse_list(&SecretString::from(bad.to_owned())).is_err(),
                "{bad}"
            );
        }
    }
}
