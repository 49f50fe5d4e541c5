//! Passwords: the policy of NIST SP 800-63B 5.1.1.2 and OWASP ASVS 4.0 V2.1. At least 8 characters
//! (ASVS 2.1.1), up to 128 (ASVS 2.1.2), counted in Unicode code points and never truncated (2.1.3),
//! any character allowed (2.1.4), and refused when it is on a list of common passwords (2.1.7; the
//! `passwords` crate ships about 100,000). No composition rules (800-63B: they do not help).

use secrecy::{ExposeSecret, SecretString};

use crate::error::AppError;

pub const MIN_CHARS: usize = 8;
pub const MAX_CHARS: usize = 128;

pub struct Password(SecretString);

impl Password {
    /// Checks length first, in bytes as well, so a megabyte of input is refused without being
    /// scanned character by character or hashed.
    pub fn parse(input: &str) -> Result<Self, AppError> {
        // 128 code points are at most 512 UTF-8 bytes.
        if input.len() > MAX_CHARS * 4 {
            return Err(too_long());
        }
        let chars = input.chars().count();
        if chars < MIN_CHARS {
            return Err(AppError::bad_input(
                "password",
                "TOO_SHORT",
                format!("The password must have at least {MIN_CHARS} characters."),
            ));
        }
        if chars > MAX_CHARS {
            return Err(too_long());
        }
        if passwords::analyzer::is_common_password(input)
            || passwords::analyzer::is_common_password(input.to_lowercase())
        {
            return Err(AppError::bad_input(
                "password",
                "TOO_COMMON",
                "This password is on a list of commonly used passwords. Choose another.",
            ));
        }
        Ok(Password::normalized(input))
    }

    /// A password as typed at sign-in: only the length bounds apply (the common-password list may
    /// grow after a password was set). No account can have a password outside them, so one is refused
    /// before any hash is computed, and the answer says nothing about the account.
    pub fn for_login(input: &str) -> Result<Self, AppError> {
        if input.len() > MAX_CHARS * 4 || input.chars().count() > MAX_CHARS {
            return Err(too_long());
        }
        if input.chars().count() < MIN_CHARS {
            return Err(AppError::bad_input(
                "password",
                "TOO_SHORT",
                format!("The password has at least {MIN_CHARS} characters."),
            ));
        }
        Ok(Password::normalized(input))
    }

    /// NFKC, as NIST SP 800-63B 5.1.1.2 recommends: the same password typed on two keyboards (composed
    /// or decomposed accents, fullwidth forms) is the same password. Lengths are checked on the input.
    fn normalized(input: &str) -> Self {
        use unicode_normalization::UnicodeNormalization;
        Password(SecretString::from(input.nfkc().collect::<String>()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
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

    #[test]
    fn never_truncated() {
        let long = format!("{}x", "correct horse battery staple ".repeat(4));
        assert_eq!(Password::parse(&long).unwrap().expose(), long);
    }
}
