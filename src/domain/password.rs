//! Passwords: the policy of NIST SP 800-63B 5.1.1.2 and OWASP ASVS 4.0 V2.1. At least 8 characters
//! (ASVS 2.1.1), up to 128 (ASVS 2.1.2), counted in Unicode code points and never truncated (2.1.3),
//! any character allowed (2.1.4), and refused when it is on a list of common passwords (2.1.7; the
//! `passwords` crate ships about 100,000). No composition rules (800-63B: they do not help).
//!
//! The order is 800-63B 5.1.1.2's: normalise (NFKC) first, then check the length and the list on the
//! normalised form, which is also what gets hashed. Checked on the input instead, `１２３４５６７８`
//! (fullwidth) passed the list and was stored as `12345678`, and `a\u{301}e\u{301}i\u{301}o\u{301}`
//! counted 8 characters but was stored as 4.

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;

use crate::error::AppError;

pub const MIN_CHARS: usize = 8;
pub const MAX_CHARS: usize = 128;

/// Most code points one normalised character decomposes into (NFKD of an NFKC-stable character:
/// 4, e.g. U+1F82; a test walks every code point to check it).
const MAX_DECOMPOSITION: usize = 4;
/// Input longer than this, in bytes, cannot normalise to 128 code points or fewer, so it is refused
/// before it is normalised (a megabyte of input is never scanned). Normalisation never drops a code
/// point, so an input has at most MAX_DECOMPOSITION x 128 code points, of at most 4 bytes each: 2 KiB.
const MAX_INPUT_BYTES: usize = MAX_CHARS * MAX_DECOMPOSITION * 4;

pub struct Password(SecretString);

impl Password {
    /// A new password (register): NFKC, then the length bounds and the common-password list, all on
    /// the normalised form.
    pub fn parse(input: &str) -> Result<Self, AppError> {
        if input.len() > MAX_INPUT_BYTES {
            return Err(too_long());
        }
        let normalized = normalize(input);
        let chars = normalized.chars().count();
        if chars < MIN_CHARS {
            return Err(too_short("must have"));
        }
        if chars > MAX_CHARS {
            return Err(too_long());
        }
        if passwords::analyzer::is_common_password(normalized.as_str())
            || passwords::analyzer::is_common_password(normalized.to_lowercase())
        {
            return Err(AppError::bad_input(
                "password",
                "TOO_COMMON",
                "This password is on a list of commonly used passwords. Choose another.",
            ));
        }
        Ok(Password(SecretString::from(normalized)))
    }

    /// A password as typed at sign-in, normalised as at registration (what was hashed). Only the
    /// length bounds apply (the common-password list may grow after a password was set), so one no
    /// account can have is refused before any hash is computed, and the answer says nothing about the
    /// account. Accounts made before the bounds moved to the normalised form had them checked on the
    /// input: a password within the bounds either way is accepted, so those still sign in.
    pub fn for_login(input: &str) -> Result<Self, AppError> {
        if input.len() > MAX_INPUT_BYTES {
            return Err(too_long());
        }
        let normalized = normalize(input);
        let within = |s: &str| (MIN_CHARS..=MAX_CHARS).contains(&s.chars().count());
        if !within(&normalized) && !within(input) {
            return Err(if normalized.chars().count() > MAX_CHARS {
                too_long()
            } else {
                too_short("has")
            });
        }
        Ok(Password(SecretString::from(normalized)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// NFKC, as NIST SP 800-63B 5.1.1.2 recommends: the same password typed on two keyboards (composed
/// or decomposed accents, fullwidth forms) is the same password.
fn normalize(input: &str) -> String {
    input.nfkc().collect()
}

fn too_short(verb: &str) -> AppError {
    AppError::bad_input(
        "password",
        "TOO_SHORT",
        format!("The password {verb} at least {MIN_CHARS} characters."),
    )
}

fn too_long() -> AppError {
    AppError::bad_input(
        "password",
        "TOO_LONG",
        format!("The password must have at most {MAX_CHARS} characters."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<Password, AppError>) -> &'static str {
        match r {
            Err(AppError::BadInput { reason, .. }) => reason,
            Err(_) => "OTHER",
            Ok(_) => "OK",
        }
    }

    #[test]
    fn length_is_counted_in_code_points() {
        assert_eq!(reason(Password::parse("Zq7#kLp")), "TOO_SHORT");
        assert_eq!(reason(Password::parse("Zq7#kLpw")), "OK");
        // 8 code points, 24 bytes: long enough.
        assert_eq!(reason(Password::parse("密码密码密码密码")), "OK");
        assert_eq!(reason(Password::parse(&"é".repeat(128))), "OK");
        assert_eq!(reason(Password::parse(&"é".repeat(129))), "TOO_LONG");
        assert_eq!(reason(Password::parse(&"a".repeat(1 << 20))), "TOO_LONG");
    }

    #[test]
    fn common_passwords_are_refused() {
        assert_eq!(reason(Password::parse("password")), "TOO_COMMON");
        assert_eq!(reason(Password::parse("12345678")), "TOO_COMMON");
        assert_eq!(reason(Password::parse("PASSWORD1")), "TOO_COMMON");
    }

    #[test]
    fn composed_and_decomposed_are_one_password() {
        let composed = Password::parse("caf\u{e9}-anchor-19").unwrap();
        let decomposed = Password::for_login("cafe\u{301}-anchor-19").unwrap();
        assert_eq!(composed.expose(), decomposed.expose());
    }

    /// NIST SP 800-63B 5.1.1.2: normalised first, then checked. Fullwidth digits are the common
    /// `12345678`, and four letters with combining accents are four characters, not eight.
    #[test]
    fn checked_after_normalisation() {
        assert_eq!(
            reason(Password::parse(
                "\u{ff11}\u{ff12}\u{ff13}\u{ff14}\u{ff15}\u{ff16}\u{ff17}\u{ff18}"
            )),
            "TOO_COMMON"
        );
        let accents = "a\u{301}e\u{301}i\u{301}o\u{301}";
        assert_eq!(accents.chars().count(), 8);
        assert_eq!(reason(Password::parse(accents)), "TOO_SHORT");
        // Fine before and after: unchanged.
        for fine in ["violet-anchor-1987", "caf\u{e9}-anchor-19", "密码密码密码密码"] {
            assert_eq!(Password::parse(fine).unwrap().expose(), fine);
        }
        // Normalisation shrinks: 128 characters typed decomposed (4 code points, 8 bytes each, and
        // Hangul as 3 jamo, 9 bytes) are 128 characters, within the input cap.
        let greek = "\u{3b1}\u{313}\u{300}\u{345}".repeat(128);
        assert_eq!(Password::parse(&greek).unwrap().expose(), "\u{1f82}".repeat(128));
        let hangul = "\u{1112}\u{1161}\u{11ab}".repeat(128);
        assert_eq!(Password::parse(&hangul).unwrap().expose(), "\u{d55c}".repeat(128));
        assert_eq!(reason(Password::parse(&(hangul + "\u{d55c}"))), "TOO_LONG");
    }

    /// Sign-in normalises as registration did, and still accepts a password set while the bounds were
    /// checked on the input (stored normalised, 4 characters): no account is locked out of its password.
    #[test]
    fn login_normalises_and_keeps_older_passwords() {
        let accents = "a\u{301}e\u{301}i\u{301}o\u{301}";
        assert_eq!(
            Password::for_login(accents).unwrap().expose(),
            "\u{e1}\u{e9}\u{ed}\u{f3}"
        );
        assert_eq!(
            reason(Password::for_login("\u{e1}\u{e9}\u{ed}\u{f3}")),
            "TOO_SHORT"
        );
        let fullwidth = "\u{ff11}\u{ff12}\u{ff13}\u{ff14}\u{ff15}\u{ff16}\u{ff17}\u{ff18}";
        assert_eq!(Password::for_login(fullwidth).unwrap().expose(), "12345678");
        assert_eq!(reason(Password::for_login("short7!")), "TOO_SHORT");
        assert_eq!(reason(Password::for_login(&"a".repeat(129))), "TOO_LONG");
        assert_eq!(reason(Password::for_login(&"a".repeat(1 << 20))), "TOO_LONG");
    }

    /// MAX_INPUT_BYTES never refuses a password whose normal form is within 128 characters: no
    /// NFKC-stable character decomposes into more than MAX_DECOMPOSITION code points.
    #[test]
    fn input_cap_covers_every_decomposition() {
        let longest = (0..=0x10_FFFFu32)
            .filter_map(char::from_u32)
            .filter(|c| {
                let mut buf = [0; 4];
                let s: &str = c.encode_utf8(&mut buf);
                unicode_normalization::is_nfkc_quick(s.chars()) == unicode_normalization::IsNormalized::Yes
            })
            .map(|c| std::iter::once(c).nfkd().count())
            .max();
        assert_eq!(longest, Some(MAX_DECOMPOSITION));
    }

    #[test]
    fn never_truncated() {
        let long = format!("{}x", "correct horse battery staple ".repeat(4));
        assert_eq!(Password::parse(&long).unwrap().expose(), long);
    }
}
