//! Bearer tokens: JWTs from configured issuers (keys from a JWKS file; RS256, ES256 or EdDSA),
//! checked for signature, `iss`, `aud`, `exp`, `nbf`, a short lifetime and, where the issuer
//! requires it, a multi-factor sign-in (`amr`, `acr`); and the dev-mode
//! issuer whose Ed25519 key `hearth token issue` signs with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::Principal;
use super::scopes::ScopeSet;

/// The issuer and audience of tokens minted by `hearth token issue` in dev mode.
pub const DEV_ISSUER: &str = "hearth-dev";
pub const DEV_AUDIENCE: &str = "hearth-dev";

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a usable key set: {reason}")]
    BadKeys { path: PathBuf, reason: String },
    #[error("cannot create the development signing key: {0}")]
    Generate(String),
}

/// A configured token issuer.
pub struct Issuer {
    pub iss: String,
    pub audience: String,
    keys: Vec<VerifyKey>,
    /// `amr` values of which a token must name one (multi-factor sign-in); empty: any.
    require_amr: Vec<String>,
    /// `acr` values of which a token must carry one; empty: any.
    require_acr: Vec<String>,
}

struct VerifyKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl Issuer {
    /// An issuer whose public keys are in a JWKS file.
    pub fn from_jwks_file(iss: &str, audience: &str, path: &Path) -> Result<Issuer, TokenError> {
        let bad = |reason: String| TokenError::BadKeys { path: path.to_owned(), reason };
        let text =
            std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.to_owned(), source })?;
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
                (Some(alg), _) => alg.to_string().parse::<Algorithm>().map_err(|e| bad(e.to_string()))?,
                (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
                (None, AlgorithmParameters::EllipticCurve(ec)) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
                (None, AlgorithmParameters::OctetKeyPair(_)) => Algorithm::EdDSA,
                _ => return Err(bad("a key has no usable algorithm (RS256, ES256 or EdDSA)".into())),
            };
            if !matches!(algorithm, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA) {
                return Err(bad(format!("algorithm {algorithm:?} is not accepted; use RS256, ES256 or EdDSA")));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
            keys.push(VerifyKey { kid: jwk.common.key_id.clone(), algorithm, key });
        }
        if keys.is_empty() {
            return Err(bad("no keys".into()));
        }
        Ok(Issuer {
            iss: iss.to_owned(),
            audience: audience.to_owned(),
            keys,
            require_amr: vec![],
            require_acr: vec![],
        })
    }

    /// This issuer, accepting only tokens that name one of `amr` (authentication methods, RFC
    /// 8176, e.g. `mfa`) and carry one of `acr` (authentication context classes); an empty list
    /// checks nothing. The identity provider authenticates people; this is how the server
    /// insists that it did so with more than a password.
    pub fn requiring(mut self, amr: &[String], acr: &[String]) -> Issuer {
        self.require_amr = amr.to_vec();
        self.require_acr = acr.to_vec();
        self
    }

    /// Whether `claims` show the sign-in this issuer's tokens must have had.
    fn admits_sign_in(&self, claims: &Claims) -> Result<(), &'static str> {
        let amr: Vec<&str> = match &claims.amr {
            serde_json::Value::String(one) => vec![one.as_str()],
            serde_json::Value::Array(many) => many.iter().filter_map(serde_json::Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !self.require_amr.is_empty() && !amr.iter().any(|m| self.require_amr.iter().any(|r| r == m)) {
            return Err("the token does not show the multi-factor sign-in this server requires (amr)");
        }
        if !self.require_acr.is_empty() && !claims.acr.as_ref().is_some_and(|a| self.require_acr.contains(a)) {
            return Err("the token does not carry the authentication level this server requires (acr)");
        }
        Ok(())
    }

    /// The dev-mode issuer, trusting the public half of the development signing key.
    pub fn development(key_file: &Path) -> Result<Issuer, TokenError> {
        Ok(Issuer::trusting(&DevSigningKey::load_or_create(key_file)?))
    }

    /// The dev-mode issuer trusting `signing`'s public half.
    pub fn trusting(signing: &DevSigningKey) -> Issuer {
        Issuer {
            iss: DEV_ISSUER.to_owned(),
            audience: DEV_AUDIENCE.to_owned(),
            keys: vec![VerifyKey { kid: None, algorithm: Algorithm::EdDSA, key: signing.decoding.clone() }],
            require_amr: Vec::new(),
            require_acr: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(default)]
    scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roles: Vec<String>,
    aud: serde_json::Value,
    /// Authentication methods: an array of strings (RFC 8176), or one string as some
    /// providers send it.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    amr: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acr: Option<String>,
}

/// How many verified tokens are remembered (a client reuses its token for many requests).
const CACHE_CAPACITY: usize = 10_000;

/// Checks bearer tokens against the configured issuers.
pub struct TokenVerifier {
    issuers: Vec<Issuer>,
    max_lifetime: Duration,
    /// Tokens already verified, with their expiry (seconds since the epoch): a signature check
    /// costs tens of microseconds, a lookup well under one.
    verified: Mutex<HashMap<String, (Principal, i64)>>,
    /// Client certificate names (mutual TLS) and the scopes each grants.
    client_certificates: HashMap<String, String>,
}

impl TokenVerifier {
    pub fn new(issuers: Vec<Issuer>, max_lifetime: Duration) -> Self {
        TokenVerifier {
            issuers,
            max_lifetime,
            verified: Mutex::new(HashMap::new()),
            client_certificates: HashMap::new(),
        }
    }

    /// Maps verified client certificate names to the scopes they grant.
    pub fn with_client_certificates(mut self, mapping: HashMap<String, String>) -> Self {
        self.client_certificates = mapping;
        self
    }

    /// The principal of a client that presented a verified certificate named `name` and no
    /// bearer token; the error says why it cannot be used.
    pub fn certificate_principal(&self, name: &str) -> Result<Principal, &'static str> {
        let scope = self
            .client_certificates
            .get(name)
            .ok_or("the client certificate is valid but not mapped to any scopes on this server")?;
        Ok(Principal {
            subject: format!("cert:{name}"),
            issuer: "mtls".to_owned(),
            client_id: Some(name.to_owned()),
            patient: None,
            scopes: ScopeSet::parse(scope),
            roles: Vec::new(),
        })
    }

    pub fn issuers(&self) -> impl Iterator<Item = &Issuer> {
        self.issuers.iter()
    }

    /// Verifies `token`; the error is a short reason safe to send back in `WWW-Authenticate`.
    pub fn verify(&self, token: &str) -> Result<Principal, &'static str> {
        let now = crate::fhir::instant::now_us() / 1_000_000;
        if let Some((principal, exp)) = self.verified.lock().expect("token cache lock").get(token) {
            // The leeway applies as on a full check.
            if now <= exp + i64::try_from(LEEWAY_SECONDS).unwrap_or(0) {
                return Ok(principal.clone());
            }
        }
        let (principal, exp) = self.verify_signature(token)?;
        let mut cache = self.verified.lock().expect("token cache lock");
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (_, exp)| *exp > now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), (principal.clone(), exp));
        Ok(principal)
    }

    fn verify_signature(&self, token: &str) -> Result<(Principal, i64), &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "the token is not a well-formed JWT")?;
        let mut reason = "no trusted issuer signed this token";
        for issuer in &self.issuers {
            for key in &issuer.keys {
                if key.algorithm != header.alg || (header.kid.is_some() && key.kid.is_some() && header.kid != key.kid) {
                    continue;
                }
                let mut validation = Validation::new(key.algorithm);
                validation.set_issuer(&[&issuer.iss]);
                validation.set_audience(&[&issuer.audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                validation.validate_nbf = true;
                validation.leeway = LEEWAY_SECONDS;
                match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                    Ok(data) => {
                        issuer.admits_sign_in(&data.claims)?;
                        return self.principal(data.claims);
                    }
                    Err(error) => {
                        use jsonwebtoken::errors::ErrorKind;
                        reason = match error.kind() {
                            ErrorKind::ExpiredSignature => "the token has expired",
                            ErrorKind::ImmatureSignature => "the token is not valid yet",
                            ErrorKind::InvalidAudience => "the token is for another audience",
                            ErrorKind::InvalidIssuer => reason,
                            ErrorKind::InvalidSignature => reason,
                            _ => "the token is invalid",
                        };
                    }
                }
            }
        }
        Err(reason)
    }

    fn principal(&self, claims: Claims) -> Result<(Principal, i64), &'static str> {
        let now = crate::fhir::instant::now_us() / 1_000_000;
        let lifetime = claims.exp - claims.iat.unwrap_or(now).min(now);
        if lifetime > i64::try_from(self.max_lifetime.as_secs()).unwrap_or(i64::MAX) {
            return Err("the token lives longer than this server accepts; ask for a shorter-lived token");
        }
        let exp = claims.exp;
        Ok((
            Principal {
                subject: claims.sub,
                issuer: claims.iss,
                client_id: claims.client_id,
                patient: claims.patient,
                scopes: ScopeSet::parse(&claims.scope),
                roles: claims.roles,
            },
            exp,
        ))
    }
}

/// The Ed25519 key of the dev issuer, kept (mode 0600) in the data directory.
pub struct DevSigningKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl DevSigningKey {
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        if !path.exists() {
            write_private(path, Self::generate_pem()?.as_bytes())?;
        }
        let pem = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.to_owned(), source })?;
        Self::from_pem(&pem).map_err(|reason| TokenError::BadKeys { path: path.to_owned(), reason })
    }

    /// A new key kept only in memory (tests and fuzz targets).
    pub fn ephemeral() -> Result<Self, TokenError> {
        Self::from_pem(&Self::generate_pem()?).map_err(TokenError::Generate)
    }

    fn generate_pem() -> Result<String, TokenError> {
        let key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| TokenError::Generate(e.to_string()))?;
        Ok(key.serialize_pem())
    }

    fn from_pem(pem: &str) -> Result<Self, String> {
        let pair = rcgen::KeyPair::from_pem(pem).map_err(|e| e.to_string())?;
        let encoding = EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        let decoding = DecodingKey::from_ed_pem(pair.public_key_pem().as_bytes()).map_err(|e| e.to_string())?;
        Ok(DevSigningKey { encoding, decoding })
    }

    /// A JWT whose header and payload are `header` and `payload` as given (any bytes), signed
    /// with this key: lets the fuzz targets reach the claim checks behind the signature.
    pub fn sign_raw(&self, header: &[u8], payload: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let message = format!("{}.{}", b64.encode(header), b64.encode(payload));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, Algorithm::EdDSA)
            .expect("signing with a valid key");
        format!("{message}.{signature}")
    }

    /// Mints a dev token.
    pub fn issue(&self, subject: &str, scope: &str, ttl: Duration, patient: Option<&str>, roles: &[String]) -> String {
        let now = crate::fhir::instant::now_us() / 1_000_000;
        let claims = Claims {
            iss: DEV_ISSUER.to_owned(),
            sub: subject.to_owned(),
            exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            iat: Some(now),
            nbf: Some(now),
            scope: scope.to_owned(),
            patient: patient.map(str::to_owned),
            client_id: Some("hearth-cli".to_owned()),
            roles: roles.to_vec(),
            aud: serde_json::Value::String(DEV_AUDIENCE.to_owned()),
            amr: serde_json::Value::Null,
            acr: None,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding).expect("signing with a valid key")
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TokenError> {
    crate::secret_file::create_private(path, contents)
        .map_err(|source| TokenError::Write { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(dir: &Path) -> (DevSigningKey, TokenVerifier) {
        let path = dir.join("auth/dev-token-key.pem");
        let issuer = Issuer::development(&path).unwrap();
        (DevSigningKey::load_or_create(&path).unwrap(), TokenVerifier::new(vec![issuer], Duration::from_secs(3600)))
    }

    #[test]
    fn dev_tokens_verify_and_carry_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let (key, verifier) = verifier(dir.path());
        let token = key.issue("dr-who", "user/*.cruds admin/erasure", Duration::from_secs(900), Some("p1"), &[]);
        let principal = verifier.verify(&token).unwrap();
        assert_eq!(principal.subject, "dr-who");
        assert_eq!(principal.patient.as_deref(), Some("p1"));
        assert!(principal.scopes.has_admin("erasure"));
        assert_eq!(principal.scopes.clinical.len(), 1);
        // The second check is answered from the cache, with the same result.
        assert_eq!(verifier.verify(&token).unwrap().subject, "dr-who");
        assert_eq!(verifier.verified.lock().unwrap().len(), 1);
    }

    #[test]
    fn bad_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, verifier) = verifier(dir.path());
        assert!(verifier.verify("not-a-token").is_err());
        let token = key.issue("a", "user/*.r", Duration::from_secs(900), None, &[]);
        let mut tampered = token.clone();
        tampered.replace_range(tampered.len() - 5.., "AAAAA");
        assert!(verifier.verify(&tampered).is_err(), "signature");
        let long = key.issue("a", "user/*.r", Duration::from_secs(48 * 3600), None, &[]);
        assert!(verifier.verify(&long).unwrap_err().contains("longer"));
        // A token from another dev key is not trusted.
        let other = tempfile::tempdir().unwrap();
        let (other_key, _) = self::verifier(other.path());
        assert!(verifier.verify(&other_key.issue("a", "user/*.r", Duration::from_secs(60), None, &[])).is_err());
        // alg=none is never accepted.
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"iss":"hearth-dev","sub":"a","aud":"hearth-dev","exp":9999999999}"#)
        );
        assert!(verifier.verify(&none).is_err());
    }

    #[test]
    fn sign_in_requirements_are_checked() {
        let key = DevSigningKey::ephemeral().unwrap();
        let strict = |amr: &[&str], acr: &[&str]| {
            let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
            let issuer = Issuer::trusting(&key).requiring(&owned(amr), &owned(acr));
            TokenVerifier::new(vec![issuer], Duration::from_secs(3600))
        };
        let now = crate::fhir::instant::now_us() / 1_000_000;
        let token = |extra: &str| {
            let payload = format!(
                r#"{{"iss":"{DEV_ISSUER}","aud":"{DEV_AUDIENCE}","sub":"a","iat":{now},"exp":{}{extra}}}"#,
                now + 300
            );
            key.sign_raw(br#"{"alg":"EdDSA","typ":"JWT"}"#, payload.as_bytes())
        };
        let mfa = strict(&["mfa", "hwk"], &[]);
        assert!(mfa.verify(&token("")).unwrap_err().contains("multi-factor"));
        assert!(mfa.verify(&token(r#","amr":["pwd"]"#)).unwrap_err().contains("amr"));
        assert!(mfa.verify(&token(r#","amr":"pwd""#)).is_err());
        assert_eq!(mfa.verify(&token(r#","amr":["pwd","hwk"]"#)).unwrap().subject, "a");
        assert!(mfa.verify(&token(r#","amr":"mfa""#)).is_ok(), "one string, as some providers send it");
        let level = strict(&[], &["urn:example:loa:2"]);
        assert!(level.verify(&token(r#","acr":"urn:example:loa:1""#)).unwrap_err().contains("acr"));
        assert!(level.verify(&token(r#","acr":"urn:example:loa:2""#)).is_ok());
        // Without requirements, neither claim matters.
        assert!(strict(&[], &[]).verify(&token("")).is_ok());
    }

    fn b64(text: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }
}
