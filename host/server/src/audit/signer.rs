//! The audit checkpoint key: Ed25519, PKCS#8, kept (mode 0600) in the keyring directory next
//! to the KEKs, outside the database, and shared by every host of one deployment.

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use crate::store::StoredCheckpoint;

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0} is not an Ed25519 PKCS#8 key")]
    Malformed(PathBuf),
}

pub struct AuditSigner {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl AuditSigner {
    /// The file the key lives in, inside a keyring directory.
    pub fn path_in(keyring_dir: &Path) -> PathBuf {
        keyring_dir.join("audit-signing-key.p8")
    }

    /// Loads the key, creating it (mode 0600) if `create` and it does not exist yet.
    pub fn load(path: &Path, create: bool) -> Result<Self, SignerError> {
        if create && !path.exists() {
            let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| SignerError::Malformed(path.to_owned()))?;
            write_private(path, document.as_ref())?;
        }
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(path).map_err(|source| SignerError::Read { path: path.to_owned(), source })?,
        );
        let pair = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| SignerError::Malformed(path.to_owned()))?;
        let key_id = key_id_of(pair.public_key().as_ref());
        Ok(AuditSigner { pair, key_id })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs `message` (a caller-chosen, domain-separated byte string, e.g. an evidence pack's
    /// file list).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    pub fn checkpoint(&self, seq: i64, hash: &[u8; 32]) -> StoredCheckpoint {
        let signature = self.pair.sign(&message(seq, hash)).as_ref().to_vec();
        StoredCheckpoint {
            seq,
            hash: hash.to_vec(),
            at_us: crate::fhir::instant::now_us(),
            key_id: self.key_id.clone(),
            signature,
        }
    }
}

/// Whether `checkpoint` carries a valid signature by `public_key`.
pub fn signature_valid(public_key: &[u8], checkpoint: &StoredCheckpoint) -> bool {
    let Ok(hash) = <[u8; 32]>::try_from(checkpoint.hash.as_slice()) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, public_key).verify(&message(checkpoint.seq, &hash), &checkpoint.signature).is_ok()
}

/// Whether `signature` is `public_key`'s Ed25519 signature of `message`.
pub fn signed_by(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key).verify(message, signature).is_ok()
}

fn message(seq: i64, hash: &[u8; 32]) -> Vec<u8> {
    let mut message = b"hearth/audit-checkpoint/v1|".to_vec();
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(hash);
    message
}

/// A short id of a public key: the first 8 bytes of its SHA-256, hex.
pub fn key_id_of(public_key: &[u8]) -> String {
    Sha256::digest(public_key).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), SignerError> {
    crate::secret_file::create_private(path, contents)
        .map_err(|source| SignerError::Write { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_verify_only_with_their_key_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = AuditSigner::path_in(dir.path());
        assert!(AuditSigner::load(&path, false).is_err(), "no silent creation");
        let signer = AuditSigner::load(&path, true).unwrap();
        assert_eq!(AuditSigner::load(&path, false).unwrap().key_id(), signer.key_id(), "reloaded, same key");
        let mut checkpoint = signer.checkpoint(10, &[7; 32]);
        assert!(signature_valid(&signer.public_key(), &checkpoint));
        checkpoint.seq = 11;
        assert!(!signature_valid(&signer.public_key(), &checkpoint));
        checkpoint.seq = 10;
        checkpoint.hash[0] ^= 1;
        assert!(!signature_valid(&signer.public_key(), &checkpoint));
        let other = AuditSigner::load(&AuditSigner::path_in(&dir.path().join("x")), true).unwrap();
        checkpoint.hash[0] ^= 1;
        assert!(!signature_valid(&other.public_key(), &checkpoint));
    }
}
