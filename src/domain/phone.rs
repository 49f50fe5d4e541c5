//! Phone numbers, parsed with the `phonenumber` crate (a port of Google's libphonenumber) and kept in
//! E.164 form (`+16502530000`). Every counter, key and row is keyed on that canonical form, so that
//! "+1 (650) 253-0000", "16502530000" with region US and "＋１６５０２５３００００" are one phone.

use std::collections::HashSet;
use std::fmt;

use phonenumber::Type;
use phonenumber::country::Id;

use crate::domain::{digit_value, phone_types};
use crate::error::AppError;

/// E.164 allows at most 15 digits, country code included (ITU-T E.164 section 6).
const MAX_DIGITS: usize = 15;
/// Longest input scanned at all: 15 digits of up to 3 UTF-8 bytes, a `+`, and room for separators.
const MAX_INPUT_BYTES: usize = 64;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    e164: String,
}

/// What numbers the service accepts.
#[derive(Clone, Debug, Default)]
pub struct PhonePolicy {
    /// Region assumed for numbers written without `+`. None: such numbers are refused.
    pub default_region: Option<Id>,
    /// If set, only numbers of these regions are accepted (an SMS-pumping defence).
    pub allowed_regions: Option<HashSet<Id>>,
}

impl PhonePolicy {
    pub fn from_config(default_region: Option<&str>, allowed: Option<&str>) -> anyhow::Result<Self> {
        let parse_id = |s: &str| -> anyhow::Result<Id> {
            s.trim()
                .to_ascii_uppercase()
                .parse::<Id>()
                .map_err(|_| anyhow::anyhow!("unknown region code {s:?} (expected e.g. US, GB, IR)"))
        };
        let default_region = default_region
            .filter(|s| !s.trim().is_empty())
            .map(parse_id)
            .transpose()?;
        let allowed_regions = match allowed.filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(list) => Some(
                list.split(',')
                    .map(parse_id)
                    .collect::<anyhow::Result<HashSet<_>>>()?,
            ),
        };
        Ok(PhonePolicy {
            default_region,
            allowed_regions,
        })
    }
}

impl PhoneNumber {
    /// Parses what a user typed. Accepted: digits (see `digit_value`), one leading `+`, and the
    /// separators space, `-`, `.`, `(`, `)`. Refused before parsing: letters (libphonenumber would read
    /// `+1 800 FLOWERS` as digits), extensions, control and invisible characters, more than 15 digits.
    /// Numbers libphonenumber considers invalid are refused, and so are number types no SMS can reach
    /// (premium rate, shared cost, toll free, UAN, voicemail).
    pub fn parse(input: &str, policy: &PhonePolicy) -> Result<Self, AppError> {
        let bad = |message: &str| AppError::bad_input("phone", "INVALID_PHONE", message);
        if input.len() > MAX_INPUT_BYTES {
            return Err(bad("The phone number is too long."));
        }
        let mut cleaned = String::with_capacity(MAX_DIGITS + 1);
        let mut digits = 0usize;
        for c in input.chars() {
            match c {
                '+' | '\u{FF0B}' => {
                    if !cleaned.is_empty() {
                        return Err(bad("A + may only start the phone number."));
                    }
                    cleaned.push('+');
                }
                ' ' | '-' | '.' | '(' | ')' => {}
                c => {
                    let d = digit_value(c).ok_or_else(|| {
                        bad("A phone number may contain only digits, a leading +, spaces, dashes, dots and brackets.")
                    })?;
                    digits += 1;
                    if digits > MAX_DIGITS {
                        return Err(bad("A phone number has at most 15 digits."));
                    }
                    cleaned.push(char::from_digit(d, 10).unwrap_or('0'));
                }
            }
        }
        if digits == 0 {
            return Err(bad("The phone number is empty."));
        }
        let international = cleaned.starts_with('+');
        if !international && policy.default_region.is_none() {
            return Err(bad(
                "Write the phone number in international form, starting with + and the country code.",
            ));
        }
        // For an international number, the region the crate would look up itself (see
        // `phone_types::international_hint`): same result, without its slow lookup.
        let hint = if international {
            phone_types::international_hint(&cleaned[1..])
        } else {
            None
        };
        let region = if international {
            hint.as_ref().map(|h| h.region)
        } else {
            policy.default_region
        };
        let parsed =
            phonenumber::parse(region, &cleaned).map_err(|_| bad("This is not a valid phone number."))?;
        // The region lookup and type match of `phone_types` (the crate's own decisions, without its
        // global pattern cache): 10.2 us per parse with `is_valid()` + `number_type()` +
        // `country().id()`, which look the region up three times. The hint's classification is
        // reused when the parsed national number is the hint's digits. `is_valid()` matches the
        // national number with its leading zeros and `number_type()` without them; they agree when
        // there are none (not so for Italy's "06..."), otherwise validity is decided on the number
        // with zeros.
        let code = parsed.country().code();
        let national = parsed.national().value().to_string();
        let classified = match &hint {
            Some(h) if h.code == code && h.national == national => Some((h.meta, h.number_type)),
            _ => phone_types::classify(code, &national),
        };
        let meta = classified.map(|(m, _)| m);
        let number_type = classified.map_or(Type::Unknown, |(_, t)| t);
        let valid = if parsed.national().zeros() == 0 {
            number_type != Type::Unknown
        } else {
            let with_zeros = parsed.national().to_string();
            phone_types::classify(code, &with_zeros).is_some_and(|(_, t)| t != Type::Unknown)
        };
        if !valid {
            return Err(bad("This is not a valid phone number."));
        }
        if matches!(
            number_type,
            Type::PremiumRate | Type::SharedCost | Type::TollFree | Type::Uan | Type::Voicemail
        ) {
            return Err(AppError::bad_input(
                "phone",
                "UNSUPPORTED_NUMBER_TYPE",
                "Codes cannot be sent to this kind of number (premium rate, shared cost, toll free, UAN or voicemail).",
            ));
        }
        if let Some(allowed) = &policy.allowed_regions
            && !meta
                .and_then(|m| m.id().parse::<Id>().ok())
                .is_some_and(|r| allowed.contains(&r))
        {
            return Err(AppError::bad_input(
                "phone",
                "COUNTRY_NOT_ALLOWED",
                "Phone numbers of this country are not accepted.",
            ));
        }
        // E.164 is "+", the country code and the national significant number (leading zeros kept):
        // what the crate's E164 formatter writes, without the national format lookup it does first.
        let e164 = format!("+{code}{}", parsed.national());
        Ok(PhoneNumber { e164 })
    }

    /// Rebuilds a number read back from our own storage (already canonical).
    pub fn from_trusted_e164(e164: String) -> Self {
        PhoneNumber { e164 }
    }

    pub fn e164(&self) -> &str {
        &self.e164
    }
}

impl fmt::Debug for PhoneNumber {
    /// Phone numbers are personal data: logs show the country code and the last two digits only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = &self.e164[self.e164.len().saturating_sub(2)..];
        write!(f, "PhoneNumber(..{tail})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us() -> PhonePolicy {
        PhonePolicy::from_config(Some("US"), None).unwrap()
    }

    #[test]
    fn every_form_of_one_number_is_one_value() {
        let forms = [
            "+16502530000",
            "+1 650 253 0000",
            "+1 (650) 253-0000",
            "+1.650.253.0000",
            "6502530000",
            "(650) 253-0000",
            "＋１６５０２５３００００",
            "+١٦٥٠٢٥٣٠٠٠٠",
            "+۱۶۵۰۲۵۳۰۰۰۰",
        ];
        for f in forms {
            assert_eq!(
                PhoneNumber::parse(f, &us()).unwrap().e164(),
                "+16502530000",
                "{f}"
            );
        }
    }

    #[test]
    fn national_form_needs_a_default_region() {
        let none = PhonePolicy::default();
        assert!(PhoneNumber::parse("6502530000", &none).is_err());
        assert!(PhoneNumber::parse("+16502530000", &none).is_ok());
    }

    #[test]
    fn refuses_hostile_and_invalid_input() {
        for bad in [
            "",
            "+",
            "++16502530000",
            "+1 800 FLOWERS",
            "+1650253000\u{0}",
            "+1650\u{200B}2530000",
            "+1 650 253 0000 ext. 12",
            "+1234567890123456",
            "+1 555 123 4567",
            "1+6502530000",
        ] {
            assert!(PhoneNumber::parse(bad, &us()).is_err(), "{bad:?} accepted");
        }
        assert!(PhoneNumber::parse(&"1".repeat(1 << 20), &us()).is_err());
    }

    #[test]
    fn refuses_number_types_that_are_never_a_phone() {
        // US toll free.
        let e = PhoneNumber::parse("+1 800 253 0000", &us()).unwrap_err();
        assert!(matches!(
            e,
            AppError::BadInput {
                reason: "UNSUPPORTED_NUMBER_TYPE",
                ..
            }
        ));
        // UK premium rate.
        assert!(PhoneNumber::parse("+44 909 879 0000", &us()).is_err());
    }

    #[test]
    fn allow_list_of_regions() {
        let p = PhonePolicy::from_config(None, Some("GB, IR")).unwrap();
        assert!(PhoneNumber::parse("+989121234567", &p).is_ok());
        let e = PhoneNumber::parse("+16502530000", &p).unwrap_err();
        assert!(matches!(
            e,
            AppError::BadInput {
                reason: "COUNTRY_NOT_ALLOWED",
                ..
            }
        ));
    }

    #[test]
    fn debug_hides_the_number() {
        let p = PhoneNumber::parse("+16502530000", &us()).unwrap();
        assert_eq!(format!("{p:?}"), "PhoneNumber(..00)");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    /// Valid numbers of several regions and types.
    const BASES: [&str; 6] = [
        "+16502530000",
        "+989121234567",
        "+447400123456",
        "+4915123456789",
        "+33612345678",
        "+819012345678",
    ];

    fn policy() -> PhonePolicy {
        PhonePolicy::default()
    }

    /// Writes `digit` in one of the scripts users type.
    fn script(digit: char, which: u8) -> char {
        let d = digit as u32 - '0' as u32;
        let base = match which % 4 {
            0 => '0',
            1 => '\u{FF10}',
            2 => '\u{0660}',
            _ => '\u{06F0}',
        };
        char::from_u32(base as u32 + d).unwrap_or(digit)
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let _ = PhoneNumber::parse(&s, &policy());
        }

        #[test]
        fn parsing_phone_like_strings_never_panics(s in "[+＋0-9٠-٩۰-۹ ().\\-a-z]{0,40}") {
            let _ = PhoneNumber::parse(&s, &policy());
        }

        #[test]
        fn accepted_input_is_canonical_e164(s in "[+]?[0-9 ().\\-]{1,25}") {
            if let Ok(p) = PhoneNumber::parse(&s, &policy()) {
                let e = p.e164();
                prop_assert!(e.starts_with('+'));
                prop_assert!(e.len() <= 16 && e[1..].bytes().all(|b| b.is_ascii_digit()));
                // Canonical form is a fixed point.
                let again = PhoneNumber::parse(e, &policy()).unwrap();
                prop_assert_eq!(again.e164(), e);
            }
        }

        /// Our one-lookup validation and E.164 formatting decide exactly as the crate's `is_valid`,
        /// `number_type` and E164 formatter do (Italian leading zeros included).
        #[test]
        fn same_verdict_and_e164_as_the_crates_own_functions(
            cc in proptest::sample::select(vec!["1", "7", "20", "33", "39", "44", "49", "55", "61", "81", "86", "91", "98", "234", "971", "379", "800", "882"]),
            any_cc in 1u16..1000,
            pick_any in any::<bool>(),
            rest in "(0|00|011|810)?[0-9]{4,12}",
        ) {
            let input = if pick_any { format!("+{any_cc}{rest}") } else { format!("+{cc}{rest}") };
            let ours = PhoneNumber::parse(&input, &policy()).ok().map(|p| p.e164().to_owned());
            // E.164's 15 digits are ours to enforce, not the crate's.
            let too_long = input.len() - 1 > MAX_DIGITS;
            let reference = phonenumber::parse(None, &input).ok().filter(|_| !too_long).and_then(|n| {
                let unsupported = matches!(
                    n.number_type(&phonenumber::metadata::DATABASE),
                    Type::PremiumRate | Type::SharedCost | Type::TollFree | Type::Uan | Type::Voicemail
                );
                (n.is_valid() && !unsupported)
                    .then(|| n.format().mode(phonenumber::Mode::E164).to_string())
            });
            prop_assert_eq!(ours, reference, "{}", input);
            if let Ok(n) = phonenumber::parse(None, &input) {
                let value = n.national().value().to_string();
                let classified = phone_types::classify(n.country().code(), &value);
                prop_assert_eq!(classified.map(|(m, _)| m.id()), n.metadata(&phonenumber::metadata::DATABASE).map(|m| m.id()), "{}", input);
                prop_assert_eq!(
                    classified.map_or(Type::Unknown, |(_, t)| t),
                    n.number_type(&phonenumber::metadata::DATABASE),
                    "{}", input
                );
                let with_zeros = n.national().to_string();
                let valid = phone_types::classify(n.country().code(), &with_zeros)
                    .is_some_and(|(_, t)| t != Type::Unknown);
                prop_assert_eq!(valid, n.is_valid(), "{}", input);
            }
        }

        #[test]
        fn every_written_form_is_one_value(
            base in 0..BASES.len(),
            scripts in proptest::collection::vec(0u8..4, 16),
            seps in proptest::collection::vec(proptest::sample::select(vec!["", "", " ", "-", ".", "(", ")"]), 16),
            fullwidth_plus in any::<bool>(),
        ) {
            let e164 = BASES[base];
            let mut written = String::from(if fullwidth_plus { "＋" } else { "+" });
            for (i, d) in e164[1..].chars().enumerate() {
                written.push_str(seps[i]);
                written.push(script(d, scripts[i]));
            }
            let parsed = PhoneNumber::parse(&written, &policy());
            prop_assert!(parsed.is_ok(), "{} refused", written);
            let parsed = parsed.unwrap();
            prop_assert_eq!(parsed.e164(), e164);
        }
    }
}
