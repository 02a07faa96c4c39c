//! Server configuration: command-line flags, `HEARTH_*` environment variables and an optional
//! TOML file, in that order of precedence, resolved into one [`ServeSettings`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Defaults, documented in the README.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
pub const DEFAULT_DATA_DIR: &str = "hearth-data";
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Entries of one transaction or batch Bundle at most, unless configured otherwise.
pub const DEFAULT_MAX_BUNDLE_ENTRIES: usize = 1000;
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = 16;
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: u64 = 3600;
pub const DEFAULT_AUDIT_CHECKPOINT_EVERY: i64 = 1000;
/// Refused requests per second per client address before they answer 429 (see docs/reliability.md).
pub const DEFAULT_REFUSALS_PER_ADDRESS: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the data and its keys are: shared by `hearth serve` and the maintenance commands
/// (`keys`, `erase`). Each flag also reads a `HEARTH_*` environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct StorageArgs {
    /// TOML configuration file; flags and environment variables override its values.
    #[arg(long, env = "HEARTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Development mode: generate a local CA, TLS certificate and key-encryption key in the
    /// data directory. Never use in production.
    #[arg(long, env = "HEARTH_DEV", num_args = 0..=1, default_missing_value = "true")]
    pub dev: Option<bool>,
    /// Directory for the SQLite database and generated development files.
    #[arg(long, env = "HEARTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// sqlite://PATH or postgres://USER@HOST:PORT/DB. Default: SQLite in the data directory.
    #[arg(long, env = "HEARTH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Keyring directory holding the key-encryption keys (kek-v1.key, ...), mode 0700/0600.
    /// Default in dev mode: DATA_DIR/keys. Alternatively set HEARTH_KEKS="1:BASE64,...".
    #[arg(long, env = "HEARTH_KEYRING")]
    pub keyring: Option<PathBuf>,
    /// Largest number of database connections.
    #[arg(long, env = "HEARTH_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
    /// Apply pending schema migrations on start (otherwise run `hearth migrate` first; dev
    /// mode always applies them).
    #[arg(long, env = "HEARTH_MIGRATE", num_args = 0..=1, default_missing_value = "true")]
    pub migrate: Option<bool>,
    /// Ed25519 key (PKCS#8) signing audit checkpoints. Default: audit-signing-key.p8 in the
    /// keyring directory (created on first start).
    #[arg(long, env = "HEARTH_AUDIT_KEY")]
    pub audit_key: Option<PathBuf>,
    /// A search parameter (`Type.code`, repeatable) to index only as keyed blind tokens
    /// though it is not identifying by default, e.g. `Location.address` (docs/search.md).
    #[arg(long = "search-blind", env = "HEARTH_SEARCH_BLIND", value_delimiter = ';')]
    pub search_blind: Vec<String>,
    /// A search parameter (`Type.code`, repeatable) of a type outside the patient compartment to
    /// index in the clear (`:contains`, sorting), e.g. `Practitioner.name` (docs/search.md).
    #[arg(long = "search-plain", env = "HEARTH_SEARCH_PLAIN", value_delimiter = ';')]
    pub search_plain: Vec<String>,
}

/// `hearth serve` options. Each flag also reads a `HEARTH_*` environment variable.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Address to listen on for HTTPS (port 0 picks a free port).
    #[arg(long, env = "HEARTH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Public base URL of the FHIR endpoint, used in Location headers and Bundle links.
    #[arg(long, env = "HEARTH_BASE_URL")]
    pub base_url: Option<String>,
    /// PEM certificate chain for HTTPS (production).
    #[arg(long, env = "HEARTH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (production).
    #[arg(long, env = "HEARTH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Outside dev mode, accept a certificate issued by a Hearth development CA (refused by
    /// default: its CA key sits in some data directory).
    #[arg(long, env = "HEARTH_ALLOW_DEV_CERTIFICATE", num_args = 0..=1, default_missing_value = "true")]
    pub allow_dev_certificate: Option<bool>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "HEARTH_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most entries a transaction or batch Bundle may hold (default 1000).
    #[arg(long, env = "HEARTH_MAX_BUNDLE_ENTRIES")]
    pub max_bundle_entries: Option<usize>,
    /// Seconds without a request after which a compliance-console session ends (default 900:
    /// automatic logoff after 15 minutes).
    #[arg(long, env = "HEARTH_CONSOLE_IDLE_SECONDS")]
    pub console_idle_seconds: Option<u64>,
    /// Seconds between this host's checks of the database for plugin changes made through
    /// other hosts (default 2). On PostgreSQL changes are also notified at once (LISTEN/NOTIFY);
    /// the poll covers notifications lost while the listening connection was down.
    #[arg(long, env = "HEARTH_PLUGIN_POLL_SECONDS")]
    pub plugin_poll_seconds: Option<u64>,
    /// A trusted token issuer (`iss`); give with --jwt-audience and --jwks-file. More issuers
    /// go in the config file as [[issuers]] tables.
    #[arg(long, env = "HEARTH_JWT_ISSUER", requires_all = ["jwt_audience", "jwks_file"])]
    pub jwt_issuer: Option<String>,
    /// The audience (`aud`) tokens from --jwt-issuer must carry, usually this server's URL.
    #[arg(long, env = "HEARTH_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// JWKS file with the issuer's public keys (RS256, ES256 or EdDSA).
    #[arg(long, env = "HEARTH_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Authentication methods (`amr` values, RFC 8176, e.g. `mfa,hwk`) of which a token from
    /// --jwt-issuer must name at least one: multi-factor sign-in, checked on every token.
    #[arg(long, env = "HEARTH_JWT_REQUIRE_AMR", value_delimiter = ',')]
    pub jwt_require_amr: Vec<String>,
    /// Authentication context classes (`acr`) a token from --jwt-issuer must carry one of.
    #[arg(long, env = "HEARTH_JWT_REQUIRE_ACR", value_delimiter = ',')]
    pub jwt_require_acr: Vec<String>,
    /// PEM CA that client certificates must chain to (enables mutual TLS; clients without a
    /// certificate still use bearer tokens).
    #[arg(long, env = "HEARTH_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// A client certificate name (subject CN or DNS SAN) and the scopes it grants, as
    /// `NAME=SCOPES` (repeatable), e.g. `lab-system=system/Observation.cru`.
    #[arg(long = "client-cert", env = "HEARTH_CLIENT_CERTS", value_delimiter = ';')]
    pub client_certs: Vec<String>,
    /// Sign an audit checkpoint every this many entries.
    #[arg(long, env = "HEARTH_AUDIT_CHECKPOINT_EVERY")]
    pub audit_checkpoint_every: Option<i64>,
    /// Refused requests (401, 403) per second one client address may cause before its further
    /// refusals answer 429 and are audited as a count instead of one entry each (bursts of ten
    /// times this are allowed); 0: no limit. Default 20.
    #[arg(long, env = "HEARTH_REFUSALS_PER_ADDRESS")]
    pub refusals_per_address: Option<u32>,
    /// Longest token lifetime accepted, in seconds (exp - iat).
    #[arg(long, env = "HEARTH_MAX_TOKEN_LIFETIME")]
    pub max_token_lifetime: Option<u64>,
    /// Log format on standard error.
    #[arg(long, env = "HEARTH_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Folder of `*.toml` policy bindings (which plugins apply to which resources). Reload
    /// with `POST /admin/policies/reload` or SIGHUP.
    #[arg(long, env = "HEARTH_POLICIES")]
    pub policies: Option<PathBuf>,
    /// An Ed25519 public key (PEM or base64) plugin signatures may come from (repeatable).
    /// When any is given, unsigned plugins are refused.
    #[arg(long = "plugin-trust-key", env = "HEARTH_PLUGIN_TRUST_KEYS", value_delimiter = ';')]
    pub plugin_trust_keys: Vec<PathBuf>,
    /// A URL prefix FHIR Subscription rest-hook endpoints may start with (repeatable), e.g.
    /// `https://hooks.example.org/`. Subscriptions to anything else go to status `error`.
    #[arg(long = "subscription-endpoint", env = "HEARTH_SUBSCRIPTION_ENDPOINTS", value_delimiter = ';')]
    pub subscription_endpoints: Vec<String>,
}

/// The same settings as they may appear in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    dev: Option<bool>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    keyring: Option<PathBuf>,
    audit_key: Option<PathBuf>,
    migrate: Option<bool>,
    audit_checkpoint_every: Option<i64>,
    refusals_per_address: Option<u32>,
    base_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    max_bundle_entries: Option<usize>,
    console_idle_seconds: Option<u64>,
    plugin_poll_seconds: Option<u64>,
    db_max_connections: Option<u32>,
    log_format: Option<LogFormat>,
    max_token_lifetime: Option<u64>,
    #[serde(default)]
    issuers: Vec<IssuerConfig>,
    client_ca: Option<PathBuf>,
    #[serde(default)]
    client_certs: Vec<ClientCertConfig>,
    allow_dev_certificate: Option<bool>,
    policies: Option<PathBuf>,
    #[serde(default)]
    plugin_trust_keys: Vec<PathBuf>,
    #[serde(default)]
    subscription_endpoints: Vec<String>,
    #[serde(default)]
    search_blind: Vec<String>,
    #[serde(default)]
    search_plain: Vec<String>,
}

/// A client certificate name and the scopes it grants.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertConfig {
    pub name: String,
    pub scope: String,
}

/// A trusted token issuer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    pub iss: String,
    pub audience: String,
    pub jwks_file: PathBuf,
    /// `amr` values of which a token must name at least one (empty: not checked).
    #[serde(default)]
    pub require_amr: Vec<String>,
    /// `acr` values of which a token must carry one (empty: not checked).
    #[serde(default)]
    pub require_acr: Vec<String>,
}

/// Where the HTTPS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// Operator-provided PEM files.
    Files { cert: PathBuf, key: PathBuf },
    /// Generated development CA and certificate in the data directory.
    DevGenerated,
}

/// Where the key-encryption keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A keyring directory (the file provider).
    Directory(PathBuf),
    /// The `HEARTH_KEKS` environment variable.
    Environment,
}

/// The environment variable the environment key provider reads.
pub const KEKS_ENV: &str = "HEARTH_KEKS";

/// Resolved storage settings.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub dev: bool,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub keys: KeySource,
    pub db_max_connections: u32,
    /// The audit checkpoint signing key file.
    pub audit_key: PathBuf,
    /// Apply pending migrations when opening the database.
    pub migrate: bool,
}

/// Fully resolved settings for `hearth serve`.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// The configuration file these settings were read from, if any.
    pub config_file: Option<PathBuf>,
    pub storage: StorageSettings,
    pub listen: SocketAddr,
    pub base_url: Option<String>,
    pub tls: TlsSource,
    pub max_body_bytes: usize,
    pub max_bundle_entries: usize,
    pub console_idle: std::time::Duration,
    pub plugin_poll: std::time::Duration,
    pub log_format: LogFormat,
    /// Issuers from configuration; in dev mode the development issuer is trusted as well.
    pub issuers: Vec<IssuerConfig>,
    pub max_token_lifetime: std::time::Duration,
    pub audit_checkpoint_every: i64,
    /// Refusals per second per client address before they answer 429 (0: unlimited).
    pub refusals_per_address: u32,
    pub client_ca: Option<PathBuf>,
    pub client_certs: Vec<ClientCertConfig>,
    pub allow_dev_certificate: bool,
    pub policies: Option<PathBuf>,
    pub plugin_trust_keys: Vec<PathBuf>,
    pub subscription_endpoints: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the configuration file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "no TLS certificate is configured. Pass --tls-cert and --tls-key (or HEARTH_TLS_CERT and \
         HEARTH_TLS_KEY), or start with --dev to generate a development certificate"
    )]
    NoTls,
    #[error("--tls-cert and --tls-key must be given together")]
    HalfTls,
    #[error(
        "no key-encryption key is configured. Pass --keyring DIR (create one with \
         `hearth keys init --keyring DIR`) or set HEARTH_KEKS, or start with --dev"
    )]
    NoKeys,
    #[error(
        "no token issuer is configured. Pass --jwt-issuer, --jwt-audience and --jwks-file (or \
         [[issuers]] in the config file), or start with --dev to use `hearth token issue`"
    )]
    NoIssuer,
    #[error("--client-cert takes NAME=SCOPES (got {0:?})")]
    BadClientCert(String),
    #[error("client certificates are mapped to scopes but no --client-ca says which CA to trust")]
    ClientCertsWithoutCa,
    #[error("max_body_bytes must be at least 1024")]
    BodyLimitTooSmall,
    #[error("base_url must start with https:// or http:// (got a value that does not)")]
    BadBaseUrl,
    #[error("search_blind / search_plain: {0}")]
    SearchStorage(String),
}

impl StorageArgs {
    /// Resolves flags and environment (already merged by clap) over the file over defaults.
    pub fn resolve(&self) -> Result<StorageSettings, ConfigError> {
        self.resolve_with(&self.read_config()?)
    }

    fn read_config(&self) -> Result<FileConfig, ConfigError> {
        match &self.config {
            Some(path) => read_file(path),
            None => Ok(FileConfig::default()),
        }
    }

    fn resolve_with(&self, file: &FileConfig) -> Result<StorageSettings, ConfigError> {
        let dev = self.dev.or(file.dev).unwrap_or(false);
        let data_dir =
            self.data_dir.clone().or_else(|| file.data_dir.clone()).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let database_url = self
            .database_url
            .clone()
            .or_else(|| file.database_url.clone())
            .unwrap_or_else(|| crate::store::sqlite_url_for(&data_dir.join("hearth.db")));
        let keys = match (self.keyring.clone().or_else(|| file.keyring.clone()), std::env::var_os(KEKS_ENV)) {
            (Some(dir), _) => KeySource::Directory(dir),
            (None, Some(_)) => KeySource::Environment,
            (None, None) if dev => KeySource::Directory(data_dir.join("keys")),
            (None, None) => return Err(ConfigError::NoKeys),
        };
        let db_max_connections =
            self.db_max_connections.or(file.db_max_connections).unwrap_or(DEFAULT_DB_MAX_CONNECTIONS).max(2);
        let audit_key = self.audit_key.clone().or_else(|| file.audit_key.clone()).unwrap_or_else(|| match &keys {
            KeySource::Directory(dir) => crate::audit::AuditSigner::path_in(dir),
            KeySource::Environment => crate::audit::AuditSigner::path_in(&data_dir.join("keys")),
        });
        let migrate = self.migrate.or(file.migrate).unwrap_or(dev);
        let pick =
            |flags: &Vec<String>, file: &Vec<String>| if flags.is_empty() { file.clone() } else { flags.clone() };
        crate::fhir::search::registry::configure(crate::fhir::search::registry::Overrides {
            blind: pick(&self.search_blind, &file.search_blind),
            plain: pick(&self.search_plain, &file.search_plain),
        })
        .map_err(ConfigError::SearchStorage)?;
        Ok(StorageSettings { dev, data_dir, database_url, keys, db_max_connections, audit_key, migrate })
    }
}

impl ServeArgs {
    /// Resolves flags and environment (already merged by clap) over the file over defaults.
    pub fn resolve(self) -> Result<ServeSettings, ConfigError> {
        let file = self.storage.read_config()?;
        let storage = self.storage.resolve_with(&file)?;
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("the default listen address parses"));
        let base_url = self.base_url.or(file.base_url).map(|u| u.trim_end_matches('/').to_owned());
        if base_url.as_deref().is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://"))) {
            return Err(ConfigError::BadBaseUrl);
        }
        let tls = match (self.tls_cert.or(file.tls_cert), self.tls_key.or(file.tls_key)) {
            (Some(cert), Some(key)) => TlsSource::Files { cert, key },
            (None, None) if storage.dev => TlsSource::DevGenerated,
            (None, None) => return Err(ConfigError::NoTls),
            _ => return Err(ConfigError::HalfTls),
        };
        let max_body_bytes = self.max_body_bytes.or(file.max_body_bytes).unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            return Err(ConfigError::BodyLimitTooSmall);
        }
        let mut issuers = file.issuers.clone();
        if let (Some(iss), Some(audience), Some(jwks_file)) = (self.jwt_issuer, self.jwt_audience, self.jwks_file) {
            let (require_amr, require_acr) = (self.jwt_require_amr, self.jwt_require_acr);
            issuers.push(IssuerConfig { iss, audience, jwks_file, require_amr, require_acr });
        }
        if issuers.is_empty() && !storage.dev {
            return Err(ConfigError::NoIssuer);
        }
        let mut client_certs = file.client_certs.clone();
        for mapping in &self.client_certs {
            let (name, scope) = mapping.split_once('=').ok_or_else(|| ConfigError::BadClientCert(mapping.clone()))?;
            if name.trim().is_empty() || scope.trim().is_empty() {
                return Err(ConfigError::BadClientCert(mapping.clone()));
            }
            client_certs.push(ClientCertConfig { name: name.trim().to_owned(), scope: scope.trim().to_owned() });
        }
        let client_ca = self.client_ca.or(file.client_ca);
        if client_ca.is_none() && !client_certs.is_empty() {
            return Err(ConfigError::ClientCertsWithoutCa);
        }
        let max_token_lifetime = std::time::Duration::from_secs(
            self.max_token_lifetime.or(file.max_token_lifetime).unwrap_or(DEFAULT_MAX_TOKEN_LIFETIME_SECONDS),
        );
        Ok(ServeSettings {
            config_file: self.storage.config.clone(),
            storage,
            listen,
            base_url,
            tls,
            max_body_bytes,
            max_bundle_entries: self
                .max_bundle_entries
                .or(file.max_bundle_entries)
                .unwrap_or(DEFAULT_MAX_BUNDLE_ENTRIES)
                .max(1),
            console_idle: std::time::Duration::from_secs(
                self.console_idle_seconds.or(file.console_idle_seconds).unwrap_or(900).max(1),
            ),
            plugin_poll: std::time::Duration::from_secs(
                self.plugin_poll_seconds.or(file.plugin_poll_seconds).unwrap_or(2).max(1),
            ),
            log_format: self.log_format.or(file.log_format).unwrap_or(LogFormat::Text),
            issuers,
            max_token_lifetime,
            audit_checkpoint_every: self
                .audit_checkpoint_every
                .or(file.audit_checkpoint_every)
                .unwrap_or(DEFAULT_AUDIT_CHECKPOINT_EVERY)
                .max(1),
            refusals_per_address: self
                .refusals_per_address
                .or(file.refusals_per_address)
                .unwrap_or(DEFAULT_REFUSALS_PER_ADDRESS),
            client_ca,
            client_certs,
            allow_dev_certificate: self.allow_dev_certificate.or(file.allow_dev_certificate).unwrap_or(false),
            policies: self.policies.or(file.policies),
            plugin_trust_keys: if self.plugin_trust_keys.is_empty() {
                file.plugin_trust_keys
            } else {
                self.plugin_trust_keys
            },
            subscription_endpoints: if self.subscription_endpoints.is_empty() {
                file.subscription_endpoints
            } else {
                self.subscription_endpoints
            },
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.message().to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> StorageArgs {
        StorageArgs { dev: Some(true), ..Default::default() }
    }

    #[test]
    fn production_without_certificate_or_keys_refuses() {
        let keyring = StorageArgs { keyring: Some("keys".into()), ..Default::default() };
        assert!(matches!(ServeArgs { storage: keyring, ..Default::default() }.resolve(), Err(ConfigError::NoTls)));
        if std::env::var_os(KEKS_ENV).is_none() {
            assert!(matches!(StorageArgs::default().resolve(), Err(ConfigError::NoKeys)));
        }
    }

    #[test]
    fn dev_defaults() {
        let settings = ServeArgs { storage: dev(), ..Default::default() }.resolve().unwrap();
        assert_eq!(settings.tls, TlsSource::DevGenerated);
        assert_eq!(settings.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(settings.storage.database_url, "sqlite://hearth-data/hearth.db");
        assert_eq!(settings.storage.keys, KeySource::Directory("hearth-data/keys".into()));
    }

    #[test]
    fn flags_override_file_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.toml");
        std::fs::write(&path, "dev = true\nlisten = \"127.0.0.1:9000\"\nmax_body_bytes = 4096\n").unwrap();
        let storage = StorageArgs { config: Some(path.clone()), ..Default::default() };
        let settings = ServeArgs { storage, max_body_bytes: Some(2048), ..Default::default() }.resolve().unwrap();
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.max_body_bytes, 2048);

        std::fs::write(&path, "dev = true\nlisten_adress = \"x\"\n").unwrap();
        let storage = StorageArgs { config: Some(path), ..Default::default() };
        let error = ServeArgs { storage, ..Default::default() }.resolve().unwrap_err();
        assert!(error.to_string().contains("listen_adress"), "{error}");
    }

    #[test]
    fn the_packaged_example_configuration_is_valid() {
        let file: FileConfig = toml::from_str(include_str!("../../packaging/hearth.toml")).expect("example parses");
        assert_eq!(file.issuers.len(), 1);
        assert_eq!(file.keyring.as_deref(), Some(std::path::Path::new("/etc/hearth/keys")));
    }

    #[test]
    fn half_a_tls_pair_is_an_error() {
        let args = ServeArgs { storage: dev(), tls_cert: Some("c.pem".into()), ..Default::default() };
        assert!(matches!(args.resolve(), Err(ConfigError::HalfTls)));
    }
}
