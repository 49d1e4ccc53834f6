//! `Email`: an address that parsed, trimmed and lower-cased, so equality is what people mean.

use std::fmt;

/// Addresses longer than this cannot be delivered (RFC 5321 path limit).
const MAX_LENGTH: usize = 254;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(input: &str) -> Result<Self, String> {
        let normalised = input.trim().to_lowercase();
        if normalised.is_empty() {
            return Err("email: is required".to_owned());
        }
        if normalised.chars().count() > MAX_LENGTH {
            return Err(format!("email: must be at most {MAX_LENGTH} characters"));
        }
        // lettre's parser is the one that will have to deliver to it.
        normalised
            .parse::<lettre::Address>()
            .map_err(|_| format!("email: {:?} is not a valid address", input.trim()))?;
        Ok(Self(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn addresses_are_normalised_and_checked() {
        assert_eq!(
            Email::parse("  Ada@Example.COM ").map(|e| e.to_string()),
            Ok("ada@example.com".to_owned())
        );
        assert!(Email::parse("").unwrap_err().contains("is required"));
        assert!(
            Email::parse("not-an-address")
                .unwrap_err()
                .contains("is not a valid address")
        );
        assert!(Email::parse("a@b@c").is_err());
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }
}
