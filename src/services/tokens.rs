//! Access tokens: JWTs signed with Ed25519 (EdDSA), short-lived (900 s), carrying iss, aud, sub (user
//! id), sid (session id), iat and exp, and nothing personal (no phone). Tokens of a sign-in also carry
//! `auth_time` and `amr` (RFC 9068 2.2.1; methods named per RFC 8176), the sign-in's time and method,
//! kept across refreshes: other services can ask for a recent sign-in without calling us.
//!
//! Keys come from configuration as `kid:seed` pairs, newest first: the newest signs, all verify, and all
//! are published as a JWKS so that gateways and other services can verify tokens without calling us.
//! A token signed with a previous key therefore stays valid until it expires, and rotation is: add the
//! new key in front, wait one access-token lifetime, drop the old one.

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
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
}

/// `Claims` plus when and how the session was signed in.
#[derive(Serialize)]
struct AuthenticatedClaims<'a> {
    #[serde(flatten)]
    base: Claims,
    auth_time: u64,
    amr: &'a [String],
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
    ttl_seconds: u64,
    validation: Validation,
}

pub struct SigningKey {
    pub kid: String,
    seed: [u8; 32],
}

impl SigningKey {
    /// Parses `kid:seed,kid:seed` (seed: 32 bytes, base64url or base64).
    pub fn parse_list(spec: &SecretString) -> anyhow::Result<Vec<SigningKey>> {
        let mut keys = Vec::new();
        for item in spec
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (kid, seed) = item
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("JWT_SIGNING_KEYS: each key is kid:base64url-seed"))?;
            let bytes = URL_SAFE_NO_PAD
                .decode(seed.trim_end_matches('='))
                .or_else(|_| URL_SAFE.decode(seed))
                .or_else(|_| base64::engine::general_purpose::STANDARD.decode(seed))
                .map_err(|_| anyhow::anyhow!("JWT_SIGNING_KEYS: key {kid:?} is not base64"))?;
            let seed: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("JWT_SIGNING_KEYS: key {kid:?} must be 32 bytes"))?;
            if kid.is_empty() || keys.iter().any(|k: &SigningKey| k.kid == kid) {
                anyhow::bail!("JWT_SIGNING_KEYS: key ids must be non-empty and distinct");
            }
            keys.push(SigningKey {
                kid: kid.to_owned(),
                seed,
            });
        }
        if keys.is_empty() {
            anyhow::bail!("JWT_SIGNING_KEYS is empty");
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
        ttl_seconds: u64,
    ) -> anyhow::Result<Self> {
        let mut verifying = HashMap::new();
        let mut jwks = JwkSet { keys: Vec::new() };
        for key in keys {
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
            ttl_seconds,
            validation,
        })
    }

    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds
    }

    /// The public keys, as served at /.well-known/jwks.json.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    pub fn issue(&self, user_id: Uuid, session_id: Uuid) -> AppResult<String> {
        let iat = now();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id.to_string(),
            sid: session_id.to_string(),
            iat,
            exp: iat + self.ttl_seconds,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.signing_kid.clone());
        // RFC 9068: marks it an access token, so no other JWT signed with these keys can pass as one.
        header.typ = Some(ACCESS_TOKEN_TYP.into());
        jsonwebtoken::encode(&header, &claims, &self.signing_key)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("jwt encode: {e}")))
    }

    /// An access token of a session signed in at `auth_time` by `amr`: the claims of `issue` plus
    /// those two (keep the two in step).
    pub fn issue_for(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        auth: &crate::services::sessions::SessionAuth,
    ) -> AppResult<String> {
        let iat = now();
        let claims = AuthenticatedClaims {
            base: Claims {
                iss: self.issuer.clone(),
                aud: self.audience.clone(),
                sub: user_id.to_string(),
                sid: session_id.to_string(),
                iat,
                exp: iat + self.ttl_seconds,
            },
            auth_time: auth.auth_time.unix_timestamp().max(0) as u64,
            amr: &auth.amr,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.signing_kid.clone());
        header.typ = Some(ACCESS_TOKEN_TYP.into());
        jsonwebtoken::encode(&header, &claims, &self.signing_key)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("jwt encode: {e}")))
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
        TokenService::new(&keys, "iss".into(), "aud".into(), 900).unwrap()
    }

    /// Rotation: a token signed with the previous key stays valid once a new key is put in front.
    #[test]
    fn token_of_the_previous_key_stays_valid_after_rotation() {
        let old = SigningKey::generate().unwrap();
        let new = SigningKey::generate().unwrap();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let before = service(&[&old]).issue(user, session).unwrap();
        let rotated = service(&[&new, &old]);
        let v = rotated.verify(&before).unwrap();
        assert_eq!((v.user_id, v.session_id), (user, session));
        let after = rotated.issue(user, session).unwrap();
        assert!(service(&[&new]).verify(&after).is_ok());
        // Once the old key is dropped its tokens are refused.
        assert!(service(&[&new]).verify(&before).is_err());
    }

    #[test]
    fn wrong_issuer_audience_or_algorithm_is_refused() {
        let key = SigningKey::generate().unwrap();
        let ours = service(&[&key]);
        let keys = [SigningKey {
            kid: key.kid.clone(),
            seed: key.seed,
        }];
        let other_aud = TokenService::new(&keys, "iss".into(), "other".into(), 900).unwrap();
        let other_iss = TokenService::new(&keys, "other".into(), "aud".into(), 900).unwrap();
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(ours.verify(&other_aud.issue(u, s).unwrap()).is_err());
        assert!(ours.verify(&other_iss.issue(u, s).unwrap()).is_err());
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
