//! The development certificate authority: on first start in dev mode, a local CA and a server
//! certificate for localhost signed by it are written to the data directory, and reused on
//! every later start. Clients trust `ca.pem` (e.g. `curl --cacert DATA_DIR/tls/ca.pem`).
//!
//! For development only: the CA key sits next to the data, so anyone who can read the data
//! directory can mint certificates this machine's clients would trust.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use super::TlsError;

/// The common name of every development CA; production refuses certificates it issued.
pub const DEV_CA_NAME: &str = "Hearth development CA (not for production)";

/// Where the development TLS files live inside the data directory.
pub struct DevTlsFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl DevTlsFiles {
    pub fn in_dir(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        DevTlsFiles {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        }
    }

    /// Creates whatever is missing; returns true if anything was generated.
    pub fn ensure(&self) -> Result<bool, TlsError> {
        if self.server_cert.exists() && self.server_key.exists() && self.ca_cert.exists() {
            return Ok(false);
        }
        let dir = self.ca_cert.parent().expect("dev TLS files live in a directory");
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_owned(), source })?;

        let now = OffsetDateTime::now_utc();
        let issuer = if self.ca_cert.exists() && self.ca_key.exists() {
            let ca_key = KeyPair::from_pem(&read_string(&self.ca_key)?)?;
            Issuer::from_ca_cert_pem(&read_string(&self.ca_cert)?, ca_key)?
        } else {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, DEV_CA_NAME);
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = now - Duration::days(1);
            params.not_after = now + Duration::days(3650);
            let key = KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            write_file(&self.ca_cert, cert.pem().as_bytes(), false)?;
            write_file(&self.ca_key, key.serialize_pem().as_bytes(), true)?;
            Issuer::new(params, key)
        };

        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, "Hearth development server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(825);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write_file(&self.server_cert, cert.pem().as_bytes(), false)?;
        write_file(&self.server_key, key.serialize_pem().as_bytes(), true)?;
        Ok(true)
    }
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Writes a file atomically (temp file + rename); private keys get mode 0600 from creation on.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write { path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let files = DevTlsFiles::in_dir(dir.path());
        assert!(files.ensure().unwrap());
        let first = std::fs::read(&files.server_cert).unwrap();
        assert!(!files.ensure().unwrap(), "second start must reuse the files");
        assert_eq!(std::fs::read(&files.server_cert).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [&files.ca_key, &files.server_key] {
                let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", key.display());
            }
        }
        // The pair loads into rustls.
        crate::tls::server_config(&files.server_cert, &files.server_key, None).unwrap();
    }

    #[test]
    fn reissues_the_server_certificate_from_the_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        let files = DevTlsFiles::in_dir(dir.path());
        files.ensure().unwrap();
        let ca = std::fs::read(&files.ca_cert).unwrap();
        std::fs::remove_file(&files.server_cert).unwrap();
        assert!(files.ensure().unwrap());
        assert_eq!(std::fs::read(&files.ca_cert).unwrap(), ca, "the CA clients trust must not change");
    }
}
