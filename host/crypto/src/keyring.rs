//! Key-encryption keys (KEKs): versions held in a [`Keyring`], loaded through a
//! [`KeyProvider`]. The file provider (a directory of `kek-vN.key` files, mode 0600) is the
//! one shipped; the environment provider suits containers; a KMS can implement the trait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use super::SecretKey;

/// The KEK versions available to this process; the highest is the current one, used to wrap
/// new data keys.
#[derive(Debug, Clone)]
pub struct Keyring {
    keks: BTreeMap<i64, SecretKey>,
}

impl Keyring {
    pub fn new(keks: BTreeMap<i64, SecretKey>) -> Result<Self, KeyError> {
        if keks.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Keyring { keks })
    }

    pub fn current(&self) -> (i64, &SecretKey) {
        let (version, key) = self.keks.iter().next_back().expect("a keyring is never empty");
        (*version, key)
    }

    pub fn get(&self, version: i64) -> Option<&SecretKey> {
        self.keks.get(&version)
    }

    pub fn versions(&self) -> impl Iterator<Item = i64> + '_ {
        self.keks.keys().copied()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no key-encryption key found in {0}. Create one with `hearth keys init --keyring DIR`, or start with --dev"
    )]
    NoKeys(String),
    #[error("the keyring is empty")]
    Empty,
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0} is not a valid key: expected the base64 encoding of exactly 32 random bytes")]
    Malformed(String),
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("KEK version {0} already exists")]
    VersionExists(i64),
    #[error("{0} cannot create new key versions; add the new version to it and restart")]
    ReadOnly(String),
}

/// Where KEKs come from.
pub trait KeyProvider: Send + Sync {
    /// Loads every available version.
    fn load(&self) -> Result<Keyring, KeyError>;
    /// Generates and stores a new version (for rotation).
    fn create_version(&self, version: i64) -> Result<(), KeyError>;
    /// Names the source in messages (never the key material).
    fn describe(&self) -> String;
}

/// A directory of `kek-v<N>.key` files, each the base64 of 32 random bytes, mode 0600.
pub struct FileKeyProvider {
    dir: PathBuf,
}

impl FileKeyProvider {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileKeyProvider { dir: dir.into() }
    }

    fn path_of(&self, version: i64) -> PathBuf {
        self.dir.join(format!("kek-v{version}.key"))
    }
}

impl KeyProvider for FileKeyProvider {
    fn load(&self) -> Result<Keyring, KeyError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KeyError::NoKeys(self.describe())),
            Err(source) => return Err(KeyError::Read { path: self.dir.clone(), source }),
        };
        let mut keks = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| KeyError::Read { path: self.dir.clone(), source })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix("kek-v").and_then(|n| n.strip_suffix(".key")) else {
                continue;
            };
            let path = entry.path();
            let version: i64 = version.parse().map_err(|_| KeyError::Malformed(path.display().to_string()))?;
            check_private(&path)?;
            let text = Zeroizing::new(
                std::fs::read_to_string(&path).map_err(|source| KeyError::Read { path: path.clone(), source })?,
            );
            keks.insert(
                version,
                decode_key(text.trim()).ok_or_else(|| KeyError::Malformed(path.display().to_string()))?,
            );
        }
        if keks.is_empty() {
            return Err(KeyError::NoKeys(self.describe()));
        }
        Keyring::new(keks)
    }

    fn create_version(&self, version: i64) -> Result<(), KeyError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| KeyError::Write { path: self.dir.clone(), source })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = self.path_of(version);
        let key = SecretKey::generate();
        let text = Zeroizing::new(STANDARD.encode(key.expose()));
        let mut contents = zeroize::Zeroizing::new(text.as_bytes().to_vec());
        contents.push(b'\n');
        crate::secret_file::create_private(&path, &contents).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::VersionExists(version),
            _ => KeyError::Write { path: path.clone(), source },
        })
    }

    fn describe(&self) -> String {
        format!("the keyring directory {}", self.dir.display())
    }
}

/// KEKs from an environment variable: `1:BASE64[,2:BASE64...]`.
pub struct EnvKeyProvider {
    name: String,
    value: Zeroizing<String>,
}

impl EnvKeyProvider {
    pub fn new(name: &str, value: String) -> Self {
        EnvKeyProvider { name: name.to_owned(), value: Zeroizing::new(value) }
    }
}

impl KeyProvider for EnvKeyProvider {
    fn load(&self) -> Result<Keyring, KeyError> {
        let mut keks = BTreeMap::new();
        for item in self.value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let malformed = || KeyError::Malformed(format!("an entry of {} (expected VERSION:BASE64)", self.name));
            let (version, key) = item.split_once(':').ok_or_else(malformed)?;
            let version: i64 = version.trim().parse().map_err(|_| malformed())?;
            keks.insert(version, decode_key(key.trim()).ok_or_else(malformed)?);
        }
        if keks.is_empty() {
            return Err(KeyError::NoKeys(self.describe()));
        }
        Keyring::new(keks)
    }

    fn create_version(&self, _version: i64) -> Result<(), KeyError> {
        Err(KeyError::ReadOnly(self.describe()))
    }

    fn describe(&self) -> String {
        format!("the environment variable {}", self.name)
    }
}

fn decode_key(text: &str) -> Option<SecretKey> {
    let bytes = Zeroizing::new(STANDARD.decode(text).ok()?);
    SecretKey::from_bytes(&bytes)
}

fn check_private(path: &Path) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|source| KeyError::Read { path: path.to_owned(), source })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions { path: path.to_owned(), mode: mode & 0o777 });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_provider_creates_private_versions_and_loads_them() {
        let dir = tempfile::tempdir().unwrap();
        let provider = FileKeyProvider::new(dir.path().join("keys"));
        assert!(matches!(provider.load(), Err(KeyError::NoKeys(_))));
        provider.create_version(1).unwrap();
        provider.create_version(2).unwrap();
        assert!(matches!(provider.create_version(2), Err(KeyError::VersionExists(2))));
        let ring = provider.load().unwrap();
        assert_eq!(ring.versions().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(ring.current().0, 2);
        assert_ne!(ring.get(1).unwrap().expose(), ring.get(2).unwrap().expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join("keys/kek-v1.key");
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(provider.load(), Err(KeyError::Permissions { .. })));
        }
    }

    #[test]
    fn malformed_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let provider = FileKeyProvider::new(dir.path());
        provider.create_version(1).unwrap();
        std::fs::write(dir.path().join("kek-v1.key"), "c2hvcnQ=").unwrap();
        assert!(matches!(provider.load(), Err(KeyError::Malformed(_))));
    }

    #[test]
    fn env_provider_parses_versions() {
        let k1 = STANDARD.encode([1u8; 32]);
        let k2 = STANDARD.encode([2u8; 32]);
        let ring = EnvKeyProvider::new("HEARTH_KEKS", format!("1:{k1}, 2:{k2}")).load().unwrap();
        assert_eq!(ring.current().0, 2);
        assert_eq!(ring.get(1).unwrap().expose(), &[1u8; 32]);
        assert!(EnvKeyProvider::new("HEARTH_KEKS", "1:nope".into()).load().is_err());
        assert!(EnvKeyProvider::new("HEARTH_KEKS", String::new()).load().is_err());
    }
}
