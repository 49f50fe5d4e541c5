//! Person names (first and last). Optional; trimmed; at most 100 characters; no control or invisible
//! format characters (they break display and logs). Anything else is the person's own business.

use crate::error::AppError;

pub const MAX_CHARS: usize = 100;

pub struct PersonName(String);

impl PersonName {
    /// None for absent or blank input.
    pub fn parse_optional(field: &'static str, input: Option<&str>) -> Result<Option<Self>, AppError> {
        let Some(raw) = input else { return Ok(None) };
        if raw.len() > MAX_CHARS * 4 {
            return Err(AppError::bad_input(
                field,
                "TOO_LONG",
                format!("At most {MAX_CHARS} characters."),
            ));
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        if trimmed.chars().count() > MAX_CHARS {
            return Err(AppError::bad_input(
                field,
                "TOO_LONG",
                format!("At most {MAX_CHARS} characters."),
            ));
        }
        if trimmed
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}'))
        {
            return Err(AppError::bad_input(field, "INVALID_CHARACTERS", "Control and invisible characters are not allowed."));
        }
        Ok(Some(PersonName(trimmed.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(PersonName::parse_optional("firstName", None).unwrap().is_none());
        assert!(
            PersonName::parse_optional("firstName", Some("   "))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            PersonName::parse_optional("firstName", Some(" Ada "))
                .unwrap()
                .unwrap()
                .as_str(),
            "Ada"
        );
        assert!(PersonName::parse_optional("firstName", Some("A\u{0}")).is_err());
        assert!(PersonName::parse_optional("firstName", Some("A\u{202E}b")).is_err());
        assert!(PersonName::parse_optional("firstName", Some(&"x".repeat(101))).is_err());
        assert!(PersonName::parse_optional("firstName", Some(&"ü".repeat(100))).is_ok());
    }
}
