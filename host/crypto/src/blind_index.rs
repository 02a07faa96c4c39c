//! Blind indexes: search tokens for identifying values (names, identifiers, telecom, address,
//! birth date) that let the database match equal values without ever holding them.
//!
//! A token is HMAC-SHA256 under a dedicated index key (stored wrapped by the KEK like a data
//! key, rotated with them, never shredded with a patient) over the search parameter's name and
//! the normalised value. Equal normalised values give equal tokens, so exact-match search works
//! and nothing else does: no prefix, range or substring. What leaks is equality: two rows with
//! the same token hold the same value for that parameter.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::SecretKey;

/// How a value is normalised before it is indexed, so that the forms a clinic would call
/// "the same" produce the same token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    /// Names and address parts: accents stripped, case folded, whitespace and punctuation runs
    /// collapsed to one space (`"  Müller-Lüdenscheidt "` = `"muller ludenscheidt"`).
    Text,
    /// Identifiers and codes: compared as given, surrounding whitespace ignored.
    Exact,
    /// Phone numbers: digits only (`"+1 (555) 0199"` = `"15550199"`).
    Phone,
    /// E-mail addresses: case folded.
    Email,
}

pub fn normalize(kind: Normalization, value: &str) -> String {
    match kind {
        Normalization::Text => {
            let folded: String = value.nfkd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect();
            folded.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
        }
        Normalization::Exact => value.trim().to_owned(),
        Normalization::Phone => value.chars().filter(char::is_ascii_digit).collect(),
        Normalization::Email => value.trim().to_lowercase(),
    }
}

/// The key blind-index tokens are computed under; wiped from memory when dropped.
#[derive(Clone)]
pub struct BlindIndexKey(SecretKey);

impl BlindIndexKey {
    pub fn new(key: SecretKey) -> Self {
        BlindIndexKey(key)
    }

    /// A key for another purpose derived from this one (HMAC with `label`), so every host of a
    /// database shares it without another stored secret. Labels keep purposes apart.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose()).expect("HMAC takes any key length");
        mac.update(b"hearth/derived-key\0");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The token for `value` of search parameter `parameter` (e.g. `Patient.family`):
    /// the same value under another parameter gives an unrelated token.
    pub fn token(&self, parameter: &str, kind: Normalization, value: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose()).expect("HMAC takes any key length");
        mac.update(b"hearth/blind-index/v1\0");
        mac.update(parameter.as_bytes());
        mac.update(b"\0");
        mac.update(normalize(kind, value).as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_across_case_accents_and_spacing() {
        assert_eq!(normalize(Normalization::Text, "  Müller-Lüdenscheidt "), "muller ludenscheidt");
        assert_eq!(normalize(Normalization::Text, "GARCÍA"), normalize(Normalization::Text, "garcia"));
        assert_eq!(normalize(Normalization::Text, "O'Brien"), "o brien");
        assert_eq!(normalize(Normalization::Text, "Chloé\u{0301}"), "chloe");
        assert_ne!(normalize(Normalization::Text, "Ann"), normalize(Normalization::Text, "Anna"));
    }

    #[test]
    fn other_kinds() {
        assert_eq!(normalize(Normalization::Phone, "+1 (555) 0199-737"), "15550199737");
        assert_eq!(normalize(Normalization::Email, " Ann@Example.ORG "), "ann@example.org");
        assert_eq!(normalize(Normalization::Exact, " MRN-0042 "), "MRN-0042");
        assert_ne!(normalize(Normalization::Exact, "mrn-0042"), "MRN-0042", "identifiers stay case-sensitive");
    }

    #[test]
    fn tokens_depend_on_key_parameter_and_normalised_value() {
        let key = BlindIndexKey::new(SecretKey::generate());
        let family = |v: &str| key.token("Patient.family", Normalization::Text, v);
        assert_eq!(family("Müller"), family("MULLER"));
        assert_ne!(family("Müller"), family("Miller"));
        assert_ne!(family("Smith"), key.token("Patient.given", Normalization::Text, "Smith"), "per parameter");
        let other = BlindIndexKey::new(SecretKey::generate());
        assert_ne!(family("Smith"), other.token("Patient.family", Normalization::Text, "Smith"), "per key");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Normalising twice changes nothing, so a stored token and a search token computed from
        /// an already-normalised value agree.
        #[test]
        fn normalisation_is_idempotent(value in "\\PC{0,40}") {
            for kind in [Normalization::Text, Normalization::Exact, Normalization::Phone, Normalization::Email] {
                let once = normalize(kind, &value);
                prop_assert_eq!(normalize(kind, &once), once.clone(), "{:?}", kind);
            }
        }

        /// Case never matters for names.
        #[test]
        fn names_ignore_case(value in "[a-zA-Z ]{0,30}") {
            prop_assert_eq!(normalize(Normalization::Text, &value), normalize(Normalization::Text, &value.to_uppercase()));
        }
    }
}
