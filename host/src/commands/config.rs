//! `hearth config check`.

use super::CommandError;
use crate::audit::AuditSigner;
use crate::crypto::KeyError;

/// `hearth config check`: loads everything the configuration names, without starting, and
/// says exactly what is wrong.
pub fn check(args: crate::config::ServeArgs) -> Result<(), CommandError> {
    use crate::config::TlsSource;
    let settings = match args.resolve() {
        Ok(settings) => settings,
        Err(error) => {
            println!("FAIL configuration: {error}");
            return Err(CommandError::Usage("the configuration is invalid".into()));
        }
    };
    let mut failures = 0;
    let mut report = |ok: bool, what: &str, detail: String| {
        println!("{} {what}: {detail}", if ok { "ok  " } else { "FAIL" });
        failures += usize::from(!ok);
    };
    report(true, "configuration", "parses; no unknown keys".into());
    let provider = crate::serve::key_provider(&settings.storage);
    match provider.load() {
        Ok(ring) => report(
            true,
            "key-encryption keys",
            format!("versions {:?} in {}", ring.versions().collect::<Vec<_>>(), provider.describe()),
        ),
        Err(KeyError::NoKeys(_)) if settings.storage.dev => {
            report(true, "key-encryption keys", "none yet; dev mode generates one on start".into())
        }
        Err(error) => report(false, "key-encryption keys", error.to_string()),
    }
    match AuditSigner::load(&settings.storage.audit_key, false) {
        Ok(signer) => report(true, "audit checkpoint key", format!("key {}", signer.key_id())),
        Err(crate::audit::SignerError::Read { .. }) if !settings.storage.audit_key.exists() => report(
            true,
            "audit checkpoint key",
            format!("{} will be created on first start", settings.storage.audit_key.display()),
        ),
        Err(error) => report(false, "audit checkpoint key", error.to_string()),
    }
    match &settings.tls {
        TlsSource::DevGenerated => report(true, "TLS", "development certificate (dev mode only)".into()),
        TlsSource::Files { cert, key } => {
            match crate::tls::server_config(cert, key, settings.client_ca.as_deref()) {
                Ok(_) => report(true, "TLS certificate and key", "load and match".into()),
                Err(error) => report(false, "TLS certificate and key", error.to_string()),
            }
            match crate::tls::issued_by_dev_ca(cert) {
                Ok(true) if !settings.storage.dev && !settings.allow_dev_certificate => {
                    report(false, "TLS certificate issuer", "a Hearth development CA; refused outside dev mode".into())
                }
                Ok(_) => {}
                Err(error) => report(false, "TLS certificate issuer", error.to_string()),
            }
            match crate::tls::certificate_validity(cert) {
                Ok((true, until)) => report(true, "TLS certificate validity", format!("valid until {until}")),
                Ok((false, until)) => report(
                    false,
                    "TLS certificate validity",
                    format!("expired or not yet valid (not after {until}); renew it"),
                ),
                Err(error) => report(false, "TLS certificate validity", error.to_string()),
            }
        }
    }
    match crate::serve::token_verifier(&settings) {
        Ok(verifier) => {
            let issuers: Vec<&str> = verifier.issuers().map(|i| i.iss.as_str()).collect();
            report(true, "token issuers", format!("{issuers:?}"));
        }
        Err(error) => report(false, "token issuers", error.to_string()),
    }
    if failures == 0 {
        println!("configuration is usable");
        Ok(())
    } else {
        Err(CommandError::Usage(format!("{failures} problem(s) found; see the FAIL lines above")))
    }
}
