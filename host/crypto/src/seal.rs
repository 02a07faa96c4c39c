//! AES-256-GCM sealing: a fresh random 96-bit nonce per seal, stored in front of the
//! ciphertext (`nonce || ciphertext || tag`), with caller-chosen associated data.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;

/// A 256-bit key, wiped from memory when dropped, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// A new key from the operating system's random number generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.fill_bytes(&mut bytes);
        SecretKey(bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; KEY_LEN]>::try_from(bytes).ok().map(SecretKey)
    }

    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// A ciphertext failed authentication: it, its associated data or the key is not what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ciphertext failed authentication")]
pub struct IntegrityError;

/// Seals `plaintext` under `key` with associated data `aad`.
pub fn seal(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with(&key.cipher(), aad, plaintext)
}

/// Opens what [`seal`] produced, checking `aad`.
pub fn open(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, IntegrityError> {
    open_with(&key.cipher(), aad, sealed)
}

/// [`seal`] with a prepared cipher (saves the key schedule on hot paths).
pub fn seal_with(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext = cipher
        .encrypt(&nonce, Payload { msg: plaintext, aad })
        .expect("AES-GCM encryption fails only for inputs over 64 GiB");
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// [`open`] with a prepared cipher.
pub fn open_with(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, IntegrityError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(IntegrityError);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| IntegrityError)?;
    cipher.decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad }).map_err(|_| IntegrityError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fresh_nonces() {
        let key = SecretKey::generate();
        let a = seal(&key, b"row-1", b"hello");
        let b = seal(&key, b"row-1", b"hello");
        assert_ne!(a, b, "each seal uses a fresh nonce");
        assert_eq!(open(&key, b"row-1", &a).unwrap(), b"hello");
        assert_eq!(open(&key, b"row-1", &b).unwrap(), b"hello");
    }

    #[test]
    fn any_change_is_detected() {
        let key = SecretKey::generate();
        let sealed = seal(&key, b"row-1", b"hello world");
        assert_eq!(open(&key, b"row-2", &sealed), Err(IntegrityError), "other row");
        assert_eq!(open(&SecretKey::generate(), b"row-1", &sealed), Err(IntegrityError), "other key");
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            assert_eq!(open(&key, b"row-1", &flipped), Err(IntegrityError), "flipped byte {i}");
        }
        assert_eq!(open(&key, b"row-1", &sealed[..10]), Err(IntegrityError), "truncated");
    }

    proptest::proptest! {
        /// Any plaintext under any key and associated data opens to itself; any one bit
        /// changed in the sealed bytes, a different associated data, a different key or a cut
        /// is refused.
        #[test]
        fn sealing_round_trips_and_refuses_any_change(
            key in proptest::array::uniform32(proptest::num::u8::ANY),
            aad in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            plaintext in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
            bit in proptest::num::usize::ANY,
            other_aad in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            cut in proptest::num::usize::ANY,
        ) {
            let key = SecretKey::from_bytes(&key).unwrap();
            let sealed = seal(&key, &aad, &plaintext);
            proptest::prop_assert_eq!(open(&key, &aad, &sealed).unwrap(), plaintext.clone());
            let mut flipped = sealed.clone();
            let at = bit % (sealed.len() * 8);
            flipped[at / 8] ^= 1 << (at % 8);
            proptest::prop_assert_eq!(open(&key, &aad, &flipped), Err(IntegrityError));
            if other_aad != aad {
                proptest::prop_assert_eq!(open(&key, &other_aad, &sealed), Err(IntegrityError));
            }
            proptest::prop_assert_eq!(open(&SecretKey::generate(), &aad, &sealed), Err(IntegrityError));
            proptest::prop_assert_eq!(open(&key, &aad, &sealed[..cut % sealed.len()]), Err(IntegrityError));
        }
    }

    #[test]
    fn keys_do_not_print() {
        assert_eq!(format!("{:?}", SecretKey::generate()), "SecretKey(..)");
    }
}
