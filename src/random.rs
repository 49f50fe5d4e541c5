//! Secrets drawn from the operating system's CSPRNG, and the opaque tokens built from them.
//!
//! One place for the OS draw (a failure is an internal error, never a weaker fallback), and one for
//! "a random bearer string, stored only as its SHA-256" (refresh tokens, registration tokens): a dump
//! of the stores gives nothing that can be presented.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::TryRng as _;
use sha2::{Digest as _, Sha256};

/// `N` bytes from the OS CSPRNG (getrandom).
pub fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow::anyhow!("os rng: {e}"))?;
    Ok(bytes)
}

/// Tokens are 32 random bytes (256 bits, ASVS 3.2.2 asks for at least 64), 43 characters of
/// base64url: anything much longer is not one of ours and is refused without a lookup.
pub const MAX_TOKEN_LEN: usize = 64;

/// A fresh opaque token: the string handed to the client and the digest we store.
pub struct OpaqueToken {
    pub token: String,
    pub digest: [u8; 32],
}

impl OpaqueToken {
    pub fn generate() -> anyhow::Result<Self> {
        let token = URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
        let digest = Self::digest_of(&token);
        Ok(OpaqueToken { token, digest })
    }

    /// The stored form of a presented token; None for a string that cannot be one of ours.
    pub fn digest_if_plausible(presented: &str) -> Option<[u8; 32]> {
        (!presented.is_empty() && presented.len() <= MAX_TOKEN_LEN).then(|| Self::digest_of(presented))
    }

    fn digest_of(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_chars_and_their_digest_is_recomputable() {
        let t = OpaqueToken::generate().unwrap();
        assert_eq!(t.token.len(), 43);
        assert_eq!(OpaqueToken::digest_if_plausible(&t.token), Some(t.digest));
        assert_ne!(OpaqueToken::generate().unwrap().token, t.token);
        assert_eq!(OpaqueToken::digest_if_plausible(""), None);
        assert_eq!(OpaqueToken::digest_if_plausible(&"a".repeat(65)), None);
    }
}
