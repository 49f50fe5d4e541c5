//! Domain values. Each can only be built through `parse` (or, for a code, `generate`), so a value of
//! one of these types is always valid and canonical.

pub mod code;
pub mod name;
pub mod password;
pub mod phone;
mod phone_types;

pub use code::OtpCode;
pub use name::PersonName;
pub use password::Password;
pub use phone::{PhoneNumber, PhonePolicy};

/// The decimal value of a digit in the scripts users type phone numbers and codes in: ASCII,
/// fullwidth (CJK input methods), Arabic-Indic and Extended Arabic-Indic (Persian, Urdu keyboards).
/// Every form of one number therefore lands on one canonical value and one set of counters. Digits of
/// other scripts are refused rather than guessed at.
pub(crate) fn digit_value(c: char) -> Option<u32> {
    let base = match c {
        '0'..='9' => '0',
        '\u{FF10}'..='\u{FF19}' => '\u{FF10}',
        '\u{0660}'..='\u{0669}' => '\u{0660}',
        '\u{06F0}'..='\u{06F9}' => '\u{06F0}',
        _ => return None,
    };
    Some(c as u32 - base as u32)
}
