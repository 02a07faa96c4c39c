//! Plugin signatures: Ed25519 over the component's and the manifest's SHA-256. When trust
//! keys are configured, only components signed by one of them load.
//!
//! Signed message: `hearth-plugin-signature-v1\n<hex sha256 of component>\n<hex sha256 of
//! the manifest as canonical JSON>\n`. Keys are PEM (`PUBLIC KEY`, SubjectPublicKeyInfo) or
//! the raw 32-byte public key in base64, one per file; a key is named by its file stem.

use std::path::Path;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::manifest::Manifest;
use hearth_crypto::hex;

/// A named Ed25519 public key that plugin signatures may come from.
#[derive(Debug, Clone)]
pub struct TrustKey {
    pub name: String,
    public_key: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not an Ed25519 public key (PEM SubjectPublicKeyInfo or base64 of 32 bytes)")]
    NotAKey { path: String },
    #[error("{path} is not an Ed25519 private key in PKCS#8 PEM: {reason}")]
    NotAPrivateKey { path: String, reason: String },
}

/// The bytes a signature covers.
pub fn signed_message(component: &[u8], manifest: &Manifest) -> Vec<u8> {
    let canonical = serde_json::to_vec(manifest).expect("a manifest always serialises");
    format!("hearth-plugin-signature-v1\n{}\n{}\n", hex(&Sha256::digest(component)), hex(&Sha256::digest(&canonical)))
        .into_bytes()
}

impl TrustKey {
    pub fn load(path: &Path) -> Result<TrustKey, SigningError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SigningError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        let not_a_key = || SigningError::NotAKey { path: path.display().to_string() };
        let public_key = if text.contains("-----BEGIN PUBLIC KEY-----") {
            let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
            let der = base64::engine::general_purpose::STANDARD.decode(body.trim()).map_err(|_| not_a_key())?;
            // An Ed25519 SubjectPublicKeyInfo is a fixed 12-byte prefix and the 32-byte key.
            const PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
            match der.strip_prefix(&PREFIX) {
                Some(key) if key.len() == 32 => key.to_vec(),
                _ => return Err(not_a_key()),
            }
        } else {
            let raw = base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| not_a_key())?;
            if raw.len() != 32 {
                return Err(not_a_key());
            }
            raw
        };
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(TrustKey { name, public_key })
    }

    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key).verify(message, signature).is_ok()
    }
}

/// The name of the trust key that signed, if any did.
pub fn signer<'k>(keys: &'k [TrustKey], message: &[u8], signature: &[u8]) -> Option<&'k TrustKey> {
    keys.iter().find(|k| k.verifies(message, signature))
}

/// Signs with an Ed25519 PKCS#8 PEM private key (`hearth plugin sign`).
pub fn sign(private_key_pem: &Path, component: &[u8], manifest: &Manifest) -> Result<Vec<u8>, SigningError> {
    let path = private_key_pem.display().to_string();
    let text = std::fs::read_to_string(private_key_pem)
        .map_err(|e| SigningError::Read { path: path.clone(), reason: e.to_string() })?;
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| SigningError::NotAPrivateKey { path: path.clone(), reason: e.to_string() })?;
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| SigningError::NotAPrivateKey { path, reason: e.to_string() })?;
    Ok(pair.sign(&signed_message(component, manifest)).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::KeyPair;

    #[test]
    fn signatures_bind_component_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(dir.path().join("release.pem"), pair.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("release.pub"), pair.public_key_pem()).unwrap();
        let trust = TrustKey::load(&dir.path().join("release.pub")).unwrap();
        assert_eq!(trust.name, "release");
        let manifest = Manifest::parse("name = \"p\"\nversion = \"1\"\nworld = \"policy\"").unwrap();
        let signature = sign(&dir.path().join("release.pem"), b"component", &manifest).unwrap();
        let keys = [trust];
        assert!(signer(&keys, &signed_message(b"component", &manifest), &signature).is_some());
        assert!(signer(&keys, &signed_message(b"componenT", &manifest), &signature).is_none());
        let other = Manifest { version: "2".into(), ..manifest.clone() };
        assert!(signer(&keys, &signed_message(b"component", &other), &signature).is_none());
        // Raw base64 keys work too.
        let raw = Ed25519KeyPair::generate().unwrap();
        std::fs::write(
            dir.path().join("raw.key"),
            base64::engine::general_purpose::STANDARD.encode(raw.public_key().as_ref()),
        )
        .unwrap();
        assert!(TrustKey::load(&dir.path().join("raw.key")).is_ok());
    }
}
