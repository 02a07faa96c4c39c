//! Paging cursors: opaque, authenticated and bound to who asked what.
//!
//! A cursor is the position a page ended (or started) at, sealed with AES-256-GCM under a key
//! derived from the blind-index key (so every host of one database shares it) with a
//! synthetic nonce: the first 96 bits of an HMAC of the binding and the payload. Equal
//! positions of one binding give equal cursors (a client comparing links learns nothing a
//! page did not show), a client can read none, and a cursor that was altered, forged, or
//! issued to another principal or for another query fails to open: 400, never a page.
//!
//! The binding is the principal (issuer, subject, client, patient in context) and the request
//! (path and parameters, paging aside), so a cursor taken from someone else's link is useless.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::Principal;
use crate::crypto::blind_index::BlindIndexKey;
use crate::fhir::outcome::{FhirError, IssueType};

const NONCE_LEN: usize = 12;

/// The keys cursors are sealed with.
pub struct CursorKey {
    cipher: Aes256Gcm,
    nonce_key: [u8; 32],
}

impl CursorKey {
    pub fn derive(key: &BlindIndexKey) -> CursorKey {
        let cipher = Aes256Gcm::new((&key.derive("hearth/cursor/seal/v1")).into());
        CursorKey { cipher, nonce_key: key.derive("hearth/cursor/nonce/v1") }
    }

    /// Seals `payload` for `binding`.
    pub fn seal(&self, binding: &[u8], payload: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.nonce_key).expect("HMAC takes any key length");
        mac.update(&(binding.len() as u64).to_be_bytes());
        mac.update(binding);
        mac.update(payload);
        let tag = mac.finalize().into_bytes();
        let nonce: [u8; NONCE_LEN] = tag[..NONCE_LEN].try_into().expect("an HMAC-SHA256 tag has 32 bytes");
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: payload, aad: binding })
            .expect("AES-GCM encryption fails only for inputs over 64 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&tag[..NONCE_LEN]);
        out.extend_from_slice(&sealed);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens what [`CursorKey::seal`] made for `binding`; a 400 for anything else.
    pub fn open(&self, binding: &[u8], cursor: &str) -> Result<Vec<u8>, FhirError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad_cursor())?;
        if bytes.len() < NONCE_LEN + 16 {
            return Err(bad_cursor());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| bad_cursor())?;
        self.cipher.decrypt(&Nonce::from(nonce), Payload { msg: sealed, aad: binding }).map_err(|_| bad_cursor())
    }
}

pub fn bad_cursor() -> FhirError {
    FhirError::bad_request(
        IssueType::Value,
        "_cursor is not one this server issued to this token for this request; start again from the first page",
    )
}

/// What a cursor is bound to: the principal, and the request it pages (`kind`, e.g. a search
/// path, and the parameters that shape the result, in order).
pub fn binding(principal: &Principal, kind: &str, params: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut field = |text: &str| {
        out.extend_from_slice(&(text.len() as u64).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    };
    field(&principal.issuer);
    field(&principal.subject);
    field(principal.client_id.as_deref().unwrap_or(""));
    field(principal.patient.as_deref().unwrap_or(""));
    field(kind);
    for (name, value) in params {
        field(name);
        field(value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scopes::ScopeSet;
    use crate::crypto::SecretKey;

    fn principal(subject: &str) -> Principal {
        Principal {
            subject: subject.into(),
            issuer: "https://idp".into(),
            client_id: None,
            patient: None,
            scopes: ScopeSet::parse("user/*.rs"),
            roles: Vec::new(),
        }
    }

    #[test]
    fn cursors_open_only_for_their_binding_and_key() {
        let key = CursorKey::derive(&BlindIndexKey::new(SecretKey::generate()));
        let params = vec![("code".to_owned(), "x".to_owned())];
        let mine = binding(&principal("alice"), "Observation", &params);
        let cursor = key.seal(&mine, b"position");
        assert_eq!(key.open(&mine, &cursor).unwrap(), b"position");
        assert_eq!(cursor, key.seal(&mine, b"position"), "deterministic");
        assert!(
            !cursor.contains("position")
                && !String::from_utf8_lossy(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&cursor).unwrap())
                    .contains("position")
        );
        // Another principal, another query, another key, a flipped bit: refused.
        assert!(key.open(&binding(&principal("bob"), "Observation", &params), &cursor).is_err());
        assert!(key.open(&binding(&principal("alice"), "Observation", &[]), &cursor).is_err());
        assert!(key.open(&binding(&principal("alice"), "Patient", &params), &cursor).is_err());
        let other = CursorKey::derive(&BlindIndexKey::new(SecretKey::generate()));
        assert!(other.open(&mine, &cursor).is_err());
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
            assert_eq!(key.open(&mine, &tampered).unwrap_err().status, 400, "byte {i}");
            bytes[i] ^= 1;
        }
        assert!(key.open(&mine, "not a cursor").is_err() && key.open(&mine, "").is_err());
    }

    #[test]
    fn bindings_do_not_run_fields_together() {
        let a = binding(&principal("ab"), "c", &[]);
        let b = binding(&principal("a"), "bc", &[]);
        assert_ne!(a, b);
    }
}
