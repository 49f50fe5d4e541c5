//! One-time codes: six decimal digits drawn uniformly from the operating system's CSPRNG.
//!
//! `OtpCode` has no `Debug` or `Display` that shows the digits: a code must never reach a log line or
//! a response (the development SMS sender, which exists to show it, aside).

use rand::TryRng;

use crate::domain::digit_value;
use crate::error::AppError;

pub const CODE_LEN: usize = 6;
const CODE_SPACE: u32 = 1_000_000;
/// The largest multiple of 10^6 that fits in a u32: draws at or above it are rejected so that
/// `draw % 10^6` is exactly uniform (no modulo bias).
const REJECT_FROM: u32 = (u32::MAX / CODE_SPACE) * CODE_SPACE;

pub struct OtpCode(String);

impl OtpCode {
    /// A fresh code from the OS CSPRNG (getrandom), by rejection sampling.
    pub fn generate() -> Result<Self, AppError> {
        let mut rng = rand::rngs::SysRng;
        loop {
            let draw = rng
                .try_next_u32()
                .map_err(|e| AppError::Internal(anyhow::anyhow!("os rng: {e}")))?;
            if draw < REJECT_FROM {
                return Ok(OtpCode(format!("{:06}", draw % CODE_SPACE)));
            }
        }
    }

    /// Accepts exactly six digits (ASCII, fullwidth or Arabic-Indic; see `digit_value`), nothing else:
    /// no spaces, signs or other characters. Long input is refused before it is scanned.
    pub fn parse(input: &str) -> Result<Self, AppError> {
        let bad = || AppError::bad_input("code", "INVALID_FORMAT", "The code must be 6 digits.");
        // 6 digits of at most 3 UTF-8 bytes each.
        if input.len() > CODE_LEN * 3 {
            return Err(bad());
        }
        let mut out = String::with_capacity(CODE_LEN);
        for c in input.chars() {
            let d = digit_value(c).ok_or_else(bad)?;
            out.push(char::from_digit(d, 10).ok_or_else(bad)?);
        }
        if out.len() != CODE_LEN {
            return Err(bad());
        }
        Ok(OtpCode(out))
    }

    /// The digits, for hashing and for the SMS body only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtpCode(******)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_are_six_ascii_digits() {
        for _ in 0..1000 {
            let c = OtpCode::generate().unwrap();
            assert_eq!(c.expose().len(), 6);
            assert!(c.expose().bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn rejection_bound_is_a_multiple_of_the_code_space() {
        assert_eq!(REJECT_FROM % CODE_SPACE, 0);
        const { assert!(u32::MAX - REJECT_FROM < CODE_SPACE) };
    }

    #[test]
    fn generated_digits_are_roughly_uniform() {
        // 60,000 codes -> 360,000 digits, 36,000 expected per value; a biased or constant generator
        // lands far outside +-5%.
        let mut counts = [0u32; 10];
        for _ in 0..60_000 {
            for b in OtpCode::generate().unwrap().expose().bytes() {
                counts[(b - b'0') as usize] += 1;
            }
        }
        for c in counts {
            assert!((34_200..=37_800).contains(&c), "digit counts {counts:?}");
        }
    }

    #[test]
    fn parse_accepts_all_digit_forms_canonically() {
        assert_eq!(OtpCode::parse("012345").unwrap().expose(), "012345");
        assert_eq!(OtpCode::parse("０１２３４５").unwrap().expose(), "012345");
        assert_eq!(OtpCode::parse("٠١٢٣٤٥").unwrap().expose(), "012345");
        assert_eq!(OtpCode::parse("۰۱۲۳۴۵").unwrap().expose(), "012345");
    }

    #[test]
    fn parse_refuses_everything_else() {
        for bad in [
            "", "12345", "1234567", " 123456", "123456\n", "12 456", "12345a", "+12345", "-12345",
        ] {
            assert!(OtpCode::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(OtpCode::parse(&"1".repeat(10_000)).is_err());
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parsing_never_panics_and_accepts_only_six_digits(s in "\\PC{0,40}") {
            if let Ok(c) = OtpCode::parse(&s) {
                prop_assert_eq!(c.expose().len(), 6);
                prop_assert!(c.expose().bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(s.chars().count(), 6);
            }
        }

        #[test]
        fn every_script_is_one_code(n in 0u32..1_000_000, scripts in proptest::collection::vec(0u32..4, 6)) {
            let ascii = format!("{n:06}");
            let written: String = ascii
                .chars()
                .zip(&scripts)
                .map(|(c, s)| {
                    let base = [0x30, 0xFF10, 0x0660, 0x06F0][*s as usize];
                    char::from_u32(base + (c as u32 - 0x30)).unwrap_or(c)
                })
                .collect();
            let code = OtpCode::parse(&written).unwrap();
            prop_assert_eq!(code.expose(), ascii.as_str());
        }
    }
}
