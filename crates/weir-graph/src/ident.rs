//! Identifier validation: labels, relationship types, property and constraint names.
//!
//! Cypher cannot take a label or property name as a parameter, so these are the only parts of
//! a statement built from user input. They are accepted only when they match
//! `[A-Za-z_][A-Za-z0-9_]*` (at most [`MAX_IDENTIFIER_LEN`] bytes) and are always written
//! back-quoted, so neither a quote, a back-quote, a space nor a keyword can change the
//! statement.

use std::fmt;

/// Longest identifier accepted, in bytes.
pub const MAX_IDENTIFIER_LEN: usize = 128;

/// Why an identifier was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    /// The identifier is empty.
    #[error("is empty")]
    Empty,
    /// The identifier is longer than [`MAX_IDENTIFIER_LEN`].
    #[error("is {0} bytes long; at most {MAX_IDENTIFIER_LEN} allowed")]
    TooLong(usize),
    /// The identifier holds a character outside `[A-Za-z0-9_]` or starts with a digit.
    #[error(
        "`{value}` holds {found:?} at byte {at}; use letters, digits and `_` only, not starting with a digit"
    )]
    BadChar {
        /// The rejected identifier (shown with `{:?}` escaping).
        value: String,
        /// The offending character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
}

/// A validated identifier; [`fmt::Display`] writes it back-quoted for Cypher.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    /// Validates `s` (see the module docs).
    pub fn new(s: &str) -> Result<Self, IdentError> {
        validate(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The bare name, without quotes.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Validation guarantees no back-quote inside.
        write!(f, "`{}`", self.0)
    }
}

/// Checks that `s` is a safe Cypher identifier.
pub fn validate(s: &str) -> Result<(), IdentError> {
    if s.is_empty() {
        return Err(IdentError::Empty);
    }
    if s.len() > MAX_IDENTIFIER_LEN {
        return Err(IdentError::TooLong(s.len()));
    }
    for (at, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (at > 0 && c.is_ascii_digit());
        if !ok {
            return Err(IdentError::BadChar {
                value: s.to_owned(),
                found: c,
                at,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for s in ["Person", "_x", "WORKS_AT", "a1", "t123_0_456_Person"] {
            assert_eq!(Ident::new(s).unwrap().to_string(), format!("`{s}`"));
        }
    }

    #[test]
    fn rejects_injection_and_odd_names() {
        let bad = [
            "",
            "1abc",
            "Person`) DETACH DELETE n //",
            "a b",
            "a-b",
            "Per\u{0}son",
            "Pérson",
            "x`y",
            "n:Admin",
            "a.b",
            "a'b",
            "a\"b",
            "a{b}",
        ];
        for s in bad {
            assert!(Ident::new(s).is_err(), "{s:?} accepted");
        }
        assert!(matches!(
            validate(&"a".repeat(MAX_IDENTIFIER_LEN + 1)),
            Err(IdentError::TooLong(_))
        ));
        assert!(validate(&"a".repeat(MAX_IDENTIFIER_LEN)).is_ok());
    }
}
