//! Encryption at rest: AES-256-GCM sealing with row-binding associated data, key-encryption
//! keys (KEKs) with versions in a keyring, and per-compartment data keys wrapped by a KEK.
//!
//! The scheme: every stored resource version is sealed under the data key of its patient
//! compartment (or of its resource type when it belongs to no patient). Data keys live in the
//! database only wrapped by a KEK; KEKs live outside the database (a keyring directory or an
//! environment variable). Rotating the KEK re-wraps data keys only. Destroying a data key
//! makes every version sealed under it unreadable (crypto-shredding).

pub mod blind_index;
mod keyring;
mod seal;
pub mod secret_file;

pub use keyring::{EnvKeyProvider, FileKeyProvider, KeyError, KeyProvider, Keyring};
pub use seal::{IntegrityError, SecretKey, open, open_with, seal, seal_with};

/// Lower-case hexadecimal of `bytes` (digests, hashes, key check values as text).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Associated data binding a resource ciphertext to its row: moving it to another resource,
/// version or data key makes it fail to open.
pub fn resource_aad(res_type: &str, id: &str, version: i64, key_id: &str) -> Vec<u8> {
    format!("hearth/resource/v1|{res_type}|{id}|{version}|{key_id}").into_bytes()
}

/// Associated data binding a wrapped data key to its id and the KEK version that wrapped it.
pub fn data_key_aad(key_id: &str, kek_version: i64) -> Vec<u8> {
    format!("hearth/data-key/v1|{key_id}|{kek_version}").into_bytes()
}

/// A value sealed under a KEK at registration, to recognise that key later.
pub fn kek_check_value(kek: &SecretKey, kek_version: i64) -> Vec<u8> {
    seal(kek, &kek_check_aad(kek_version), b"")
}

/// Whether `kek` is the key that produced `check_value`.
pub fn kek_matches(kek: &SecretKey, kek_version: i64, check_value: &[u8]) -> bool {
    open(kek, &kek_check_aad(kek_version), check_value).is_ok()
}

fn kek_check_aad(kek_version: i64) -> Vec<u8> {
    format!("hearth/kek-check/v1|{kek_version}").into_bytes()
}

/// Wraps (encrypts) a data key under a KEK.
pub fn wrap_data_key(kek: &SecretKey, kek_version: i64, key_id: &str, data_key: &SecretKey) -> Vec<u8> {
    seal(kek, &data_key_aad(key_id, kek_version), data_key.expose())
}

/// Unwraps a data key; fails if the wrapped bytes, the key id or the KEK version were altered.
pub fn unwrap_data_key(
    kek: &SecretKey,
    kek_version: i64,
    key_id: &str,
    wrapped: &[u8],
) -> Result<SecretKey, IntegrityError> {
    let bytes = zeroize::Zeroizing::new(open(kek, &data_key_aad(key_id, kek_version), wrapped)?);
    SecretKey::from_bytes(&bytes).ok_or(IntegrityError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_keys_are_bound_to_their_id_and_kek_version() {
        let kek = SecretKey::generate();
        let dk = SecretKey::generate();
        let wrapped = wrap_data_key(&kek, 1, "patient/a", &dk);
        assert_eq!(unwrap_data_key(&kek, 1, "patient/a", &wrapped).unwrap().expose(), dk.expose());
        assert!(unwrap_data_key(&kek, 2, "patient/a", &wrapped).is_err());
        assert!(unwrap_data_key(&kek, 1, "patient/b", &wrapped).is_err());
        assert!(unwrap_data_key(&SecretKey::generate(), 1, "patient/a", &wrapped).is_err());
    }
}
