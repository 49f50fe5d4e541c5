//! PHC strings and the memory argon2 works in: hashing a new password and verifying a stored hash.
//! Synchronous and CPU bound: only the hashing threads (`pool`) call these.

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};

pub const M_COST_KIB: u32 = 19_456;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;
const SALT_LEN: usize = 16;
const MAX_STORED_M_COST_KIB: u32 = 256 * 1024;
const MAX_STORED_T_COST: u32 = 16;
const OUTPUT_LEN: usize = 32;

fn params() -> Params {
    Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN)).expect("constant argon2 parameters are valid")
}

/// The memory one argon2 computation works in, kept by its thread from one hash to the next (argon2
/// writes every block before reading it, so nothing of a previous hash is ever read).
pub struct HashMemory(Vec<Block>);

impl HashMemory {
    pub fn new() -> Self {
        HashMemory(Vec::new())
    }

    fn blocks(&mut self, params: &Params) -> &mut [Block] {
        let n = params.block_count();
        if self.0.len() < n {
            self.0.resize(n, Block::default());
        }
        &mut self.0[..n]
    }

    /// After a hash with more memory than ours (a stored hash of other parameters), give it back.
    pub(super) fn shrink_to_default(&mut self) {
        let ours = params().block_count();
        if self.0.len() > ours {
            self.0.truncate(ours);
            self.0.shrink_to_fit();
        }
    }
}

impl Default for HashMemory {
    fn default() -> Self {
        Self::new()
    }
}

/// A new PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) with a fresh random salt.
pub fn hash_with(memory: &mut HashMemory, password: &[u8]) -> anyhow::Result<String> {
    let salt = crate::random::random_bytes::<SALT_LEN>()?;
    let params = params();
    let mut out = [0u8; OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, &salt, &mut out, memory.blocks(&params))
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?,
        salt: Some(Salt::new(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("output: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored` (with the parameters stored in it, so hashes made
/// with other argon2 parameters still verify). A malformed string never matches.
pub fn verify_with(memory: &mut HashMemory, password: &[u8], stored: &str) -> bool {
    let Ok(phc) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(phc.algorithm.as_str()) else {
        return false;
    };
    let Ok(version) = phc.version.map_or(Ok(Version::default()), Version::try_from) else {
        return false;
    };
    let Ok(params) = Params::try_from(&phc) else {
        return false;
    };
    // Parameters come from our own database, but a corrupted row must not make a thread allocate
    // gigabytes or hash for hours: over 256 MiB (13x ours) or 16 passes (8x ours) is refused.
    if params.m_cost() > MAX_STORED_M_COST_KIB || params.t_cost() > MAX_STORED_T_COST {
        tracing::error!(
            m_cost = params.m_cost(),
            t_cost = params.t_cost(),
            "a stored password hash asks for too much memory or time"
        );
        return false;
    }
    let mut out = vec![0u8; expected.len()];
    let computed = Argon2::new(algorithm, version, params.clone()).hash_password_into_with_memory(
        password,
        salt,
        &mut out,
        memory.blocks(&params),
    );
    // `Output`'s equality is constant-time (subtle): no early exit tells how much of a guess matched.
    computed.is_ok() && Output::new(&out).is_ok_and(|out| out == *expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher as _, PasswordVerifier as _};

    #[test]
    fn our_hashes_and_the_crates_hashes_verify_each_other() {
        let mut memory = HashMemory::new();
        let ours = hash_with(&mut memory, b"correct horse").unwrap();
        assert!(ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{ours}");
        let crate_ctx = Argon2::new(Algorithm::Argon2id, Version::V0x13, params());
        crate_ctx
            .verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap())
            .unwrap();
        assert!(
            crate_ctx
                .verify_password(b"correct horsf", &PasswordHash::new(&ours).unwrap())
                .is_err()
        );

        let theirs = crate_ctx.hash_password(b"battery staple").unwrap().to_string();
        assert!(verify_with(&mut memory, b"battery staple", &theirs));
        assert!(!verify_with(&mut memory, b"battery stapl", &theirs));
        // Memory reused after a hash of other parameters: still right.
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).unwrap(),
        )
        .hash_password(b"x")
        .unwrap()
        .to_string();
        assert!(verify_with(&mut memory, b"x", &small));
        assert!(verify_with(&mut memory, b"battery staple", &theirs));
    }

    #[test]
    fn malformed_stored_hashes_never_match() {
        let mut memory = HashMemory::new();
        for stored in [
            "",
            "$argon2id$",
            "plain",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$",
            // 1 GiB of memory, or a million passes: refused before anything is allocated or run.
            "$argon2id$v=19$m=1048576,t=2,p=1$c2FsdHNhbHRzYWx0$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE",
            "$argon2id$v=19$m=19456,t=1000000,p=1$c2FsdHNhbHRzYWx0$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE",
        ] {
            assert!(!verify_with(&mut memory, b"", stored), "{stored}");
        }
        assert!(memory.0.is_empty(), "no memory was allocated for any of them");
    }
}
