//! TLS for the HTTPS listener: rustls server configuration from PEM files, and the
//! development certificate authority used when no certificate is configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub mod dev_ca;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("the TLS certificate and key do not form a usable pair: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot generate the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} holds a certificate that cannot be parsed: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("the client CA file {path} is not usable: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// Builds the server's TLS configuration (TLS 1.2 and 1.3 only; HTTP/2 and HTTP/1.1 via ALPN)
/// from a PEM certificate chain and a PEM private key. With `client_ca`, clients may present
/// a certificate, which must chain to that CA (mutual TLS); clients without one still connect
/// and authenticate with bearer tokens.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let bad = |reason: String| TlsError::ClientCa { path: path.to_owned(), reason };
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name a verified client certificate identifies: its subject common name, or else its
/// first DNS subject alternative name.
pub fn certificate_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        return Some(cn.to_owned());
    }
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        _ => None,
    })
}

/// Whether the first certificate in a PEM file was issued by a Hearth development CA.
pub fn issued_by_dev_ca(cert_path: &Path) -> Result<bool, TlsError> {
    with_leaf_certificate(cert_path, |cert| {
        cert.issuer().iter_common_name().any(|cn| cn.as_str().ok() == Some(dev_ca::DEV_CA_NAME))
    })
}

/// Whether the first certificate in a PEM file is valid now, and its expiry (RFC 2822 text).
pub fn certificate_validity(cert_path: &Path) -> Result<(bool, String), TlsError> {
    with_leaf_certificate(cert_path, |cert| {
        let validity = cert.validity();
        (validity.is_valid(), validity.not_after.to_string())
    })
}

/// The first certificate of a PEM file: its subject and its expiry (seconds since the epoch).
pub fn certificate_summary(cert_path: &Path) -> Result<(String, i64), TlsError> {
    with_leaf_certificate(cert_path, |cert| (cert.subject().to_string(), cert.validity().not_after.timestamp()))
}

/// Parses the first certificate of a PEM file and hands it to `inspect`.
fn with_leaf_certificate<T>(
    cert_path: &Path,
    inspect: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> T,
) -> Result<T, TlsError> {
    let certs = load_certs(cert_path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| TlsError::BadCertificate { path: cert_path.to_owned(), reason: e.to_string() })?;
    Ok(inspect(&cert))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Read { path: path.to_owned(), source })?
        .ok_or_else(|| TlsError::NoKey { path: path.to_owned() })
}
