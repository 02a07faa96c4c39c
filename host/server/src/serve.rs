//! `hearth serve`: prepares TLS and storage from resolved settings, then runs the HTTPS server
//! until SIGTERM or Ctrl-C.

use std::io::Write;

use tokio::net::TcpListener;

use std::sync::Arc;

use crate::api::{ApiSettings, PluginServices, router};
use crate::auth::token::{Issuer, TokenVerifier};
use crate::config::{KEKS_ENV, KeySource, ServeSettings, StorageSettings, TlsSource};
use crate::crypto::{EnvKeyProvider, FileKeyProvider, KeyProvider};
use crate::delivery::Delivery;
use crate::plugins::host_data::StoreData;
use crate::plugins::signing::TrustKey;
use crate::plugins::{HostServices, PluginRegistry, PluginRuntime};
use crate::policy::PolicyEngine;
use crate::store::{KeyVault, Store, StoreOptions};
use crate::tls::dev_ca::DevTlsFiles;

/// Why the server could not start; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Keys(#[from] crate::crypto::KeyError),
    #[error(transparent)]
    Tokens(#[from] crate::auth::token::TokenError),
    #[error("audit checkpoint key: {0}")]
    AuditKey(#[from] crate::audit::SignerError),
    #[error("{}", with_advice(.0))]
    Store(#[from] crate::store::StoreError),
    #[error(
        "{path} was issued by a Hearth development CA, whose key sits in a data directory. Use a real \
         certificate, or pass --allow-dev-certificate for a test deployment"
    )]
    DevCertificate { path: std::path::PathBuf },
    #[error(
        "the database has schema migration {version}, which this Hearth does not know: it was upgraded by a \
         newer version. Run that version (or newer)"
    )]
    SchemaNewer { version: i64 },
    #[error(
        "the database needs schema migrations {pending:?}. Back it up, then run `hearth migrate` (or start \
         with --migrate)"
    )]
    MigrationsPending { pending: Vec<i64> },
    #[error("plugin runtime: {0}")]
    Plugins(String),
    #[error("policy bindings: {0}. Fix the file or point --policies elsewhere")]
    Policies(#[from] crate::policy::BindingError),
    #[error("plugin trust key: {0}")]
    TrustKey(#[from] crate::plugins::signing::SigningError),
    #[error("cannot listen on {addr}: {source}. Choose another address with --listen")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
}

/// A storage error at start-up; a failed connection also says where to look. (Errors that
/// carry their own advice, such as a missing key or a read-only file system, keep just theirs.)
fn with_advice(error: &crate::store::StoreError) -> String {
    use crate::store::StoreError;
    match error {
        StoreError::Connect(_) | StoreError::Unavailable(_) | StoreError::UnsupportedUrl => {
            format!("{error}. Check --database-url / HEARTH_DATABASE_URL and that the database server is running")
        }
        other => other.to_string(),
    }
}

/// Opens the database with its keys: loads the keyring (generating the first KEK into the
/// data directory in dev mode only), connects, applies migrations and checks that every data
/// key can be unwrapped.
pub async fn open_store(settings: &StorageSettings) -> Result<Store, StartError> {
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|source| StartError::DataDir { path: settings.data_dir.clone(), source })?;
    let provider = key_provider(settings);
    if let KeySource::Directory(dir) = &settings.keys
        && settings.dev
        && matches!(provider.load(), Err(crate::crypto::KeyError::NoKeys(_)))
    {
        provider.create_version(1)?;
        tracing::warn!(keyring = %dir.display(), "generated a development key-encryption key");
    }
    let vault = Arc::new(KeyVault::new(provider)?);
    let store_options = StoreOptions { max_connections: settings.db_max_connections, ..StoreOptions::default() };
    #[allow(unused_mut)]
    let mut store = Store::connect(&settings.database_url, &store_options, vault).await?;
    #[cfg(feature = "bench-plaintext")]
    if std::env::var_os("HEARTH_BENCH_PLAINTEXT").is_some() {
        tracing::warn!("BENCHMARK BUILD: resource bodies are stored WITHOUT encryption");
        store.store_plaintext_for_benchmarks();
    }
    let schema = store.schema_status().await?;
    if let Some(newer) = schema.newer() {
        return Err(StartError::SchemaNewer { version: newer });
    }
    let pending = schema.pending();
    if !pending.is_empty() {
        if !settings.migrate {
            return Err(StartError::MigrationsPending { pending });
        }
        tracing::info!(?pending, "applying schema migrations");
        store.migrate().await?;
    }
    store.prepare_keys().await?;
    Ok(store)
}

/// Rebuilds the search index when it was built by another registry of search parameters (or
/// by a version without search), before the server takes requests, logging progress.
async fn ensure_search_index(store: &Store) -> Result<(), StartError> {
    let fingerprint = crate::fhir::search::registry::fingerprint();
    if store.search_index_fingerprint().await?.as_deref() == Some(fingerprint.as_str()) {
        return Ok(());
    }
    tracing::info!("building the search index for the stored resources");
    let last_logged = std::sync::atomic::AtomicU64::new(0);
    let done = store
        .rebuild_search_index(&fingerprint, &|done, total| {
            let tenth = (done * 10).checked_div(total).unwrap_or(10);
            if last_logged.swap(tenth, std::sync::atomic::Ordering::Relaxed) != tenth {
                tracing::info!(done, total, "search index: {}% rebuilt", tenth * 10);
            }
        })
        .await?;
    tracing::info!(resources = done, "search index ready");
    Ok(())
}

/// Gives audit entries written before the audit lookups existed their lookup rows, so
/// `GET /AuditEvent` finds them too.
async fn index_audit_backlog(store: &Store) -> Result<(), StartError> {
    let last_logged = std::sync::atomic::AtomicU64::new(0);
    let done = store
        .index_audit_backlog(&|done, total| {
            let tenth = u64::try_from((done * 10).checked_div(total).unwrap_or(10)).unwrap_or(10);
            if last_logged.swap(tenth, std::sync::atomic::Ordering::Relaxed) != tenth {
                tracing::info!(done, total, "audit lookups: {}% of the older entries indexed", tenth * 10);
            }
        })
        .await?;
    if done > 0 {
        tracing::info!(entries = done, "audit lookups ready");
    }
    Ok(())
}

/// The key provider the settings name.
pub fn key_provider(settings: &StorageSettings) -> Box<dyn KeyProvider> {
    match &settings.keys {
        KeySource::Directory(dir) => Box::new(FileKeyProvider::new(dir)),
        KeySource::Environment => Box::new(EnvKeyProvider::new(KEKS_ENV, std::env::var(KEKS_ENV).unwrap_or_default())),
    }
}

pub async fn run(settings: ServeSettings) -> Result<(), StartError> {
    if settings.storage.dev {
        warn_dev_mode(&settings.storage);
    }
    let tls = match &settings.tls {
        TlsSource::Files { cert, key } => {
            if !settings.storage.dev && !settings.allow_dev_certificate && crate::tls::issued_by_dev_ca(cert)? {
                return Err(StartError::DevCertificate { path: cert.clone() });
            }
            crate::tls::server_config(cert, key, settings.client_ca.as_deref())?
        }
        TlsSource::DevGenerated => {
            let files = DevTlsFiles::in_dir(&settings.storage.data_dir);
            if files.ensure()? {
                tracing::warn!(ca = %files.ca_cert.display(), "generated a development CA and TLS certificate");
            }
            crate::tls::server_config(&files.server_cert, &files.server_key, settings.client_ca.as_deref())?
        }
    };

    let tokens = Arc::new(token_verifier(&settings)?);
    let signer = crate::audit::AuditSigner::load(&settings.storage.audit_key, true)?;
    let store = open_store(&settings.storage).await?;
    index_audit_backlog(&store).await?;
    let audit = crate::audit::AuditLog::start(
        store.clone(),
        signer,
        settings.audit_checkpoint_every,
        settings.refusals_per_address,
    );
    tracing::info!(backend = store.backend().name(), "database ready");
    ensure_search_index(&store).await?;

    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|source| StartError::Listen { addr: settings.listen, source })?;
    let bound = listener.local_addr().map_err(|source| StartError::Listen { addr: settings.listen, source })?;
    let base_url = settings.base_url.clone().unwrap_or_else(|| {
        let host = if bound.ip().is_unspecified() { "localhost".to_owned() } else { bound.ip().to_string() };
        let host = if bound.is_ipv6() && host != "localhost" { format!("[{host}]") } else { host };
        format!("https://{host}:{}", bound.port())
    });
    let api_settings = ApiSettings {
        base_url: base_url.clone(),
        max_body_bytes: settings.max_body_bytes,
        max_bundle_entries: settings.max_bundle_entries,
        console_idle: settings.console_idle,
        serve: Arc::new(settings.clone()),
    };
    let plugins = start_plugins(&settings, &store, &audit, &base_url).await?;
    let app = router(store.clone(), tokens, audit, api_settings, plugins);

    tracing::info!(%bound, %base_url, "listening");
    // One machine-readable line on stdout, for scripts and tests that started us on port 0.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "Hearth listening on https://{bound} (FHIR base {base_url})");
    let _ = stdout.flush();

    crate::server::serve(listener, tls, app, crate::server::shutdown_signal()).await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Starts the plugin runtime: loads every stored plugin (before serving, so the first request
/// is already gated), reads the policy bindings, and starts the outbox worker, the registry
/// refresher (changes made through other hosts) and the SIGHUP policy reload.
pub async fn start_plugins(
    settings: &ServeSettings,
    store: &Store,
    audit: &crate::audit::AuditLog,
    base_url: &str,
) -> Result<PluginServices, StartError> {
    // Panics inside inline plugin calls are caught and logged by the policy engine.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !crate::policy::engine::in_inline_call() {
            default_hook(info);
        }
    }));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| StartError::Plugins(format!("cannot build the HTTP client: {e}")))?;
    let services = HostServices {
        data: Arc::new(StoreData { store: store.clone(), tokio: tokio::runtime::Handle::current() }),
        tokio: tokio::runtime::Handle::current(),
        http,
    };
    let cache = settings.storage.data_dir.join("plugin-cache");
    let runtime = Arc::new(PluginRuntime::new(services, Some(cache)).map_err(StartError::Plugins)?);
    let trust_keys =
        Arc::new(settings.plugin_trust_keys.iter().map(|p| TrustKey::load(p)).collect::<Result<Vec<_>, _>>()?);
    let registry = Arc::new(PluginRegistry::new(runtime, store.clone(), trust_keys.clone()));
    registry.refresh().await?;
    registry.spawn_refresher(settings.plugin_poll);
    let policies = Arc::new(PolicyEngine::new(registry.clone(), settings.policies.clone())?);
    tracing::info!(
        plugins = registry.all().len(),
        bindings = policies.bindings().bindings.len(),
        "plugins loaded and policies bound"
    );
    let subscriptions = Arc::new(crate::subscriptions::Subscriptions::new(
        settings.subscription_endpoints.clone(),
        base_url.to_owned(),
        audit.clone(),
    ));
    spawn_subscription_refresher(subscriptions.clone(), policies.clone(), store.clone());
    let delivery = Arc::new(
        Delivery::new(store.clone(), registry.clone(), policies.clone(), subscriptions)
            .map_err(|e| StartError::Plugins(format!("cannot build the delivery HTTP client: {e}")))?,
    );
    let delivery_wake = delivery.wake.clone();
    delivery.spawn();
    #[cfg(unix)]
    {
        let policies = Arc::downgrade(&policies);
        if let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    let Some(policies) = policies.upgrade() else { return };
                    if let Err(error) = policies.reload() {
                        tracing::error!(%error, "policy reload failed; the bindings in force are unchanged");
                    }
                }
            });
        }
    }
    Ok(PluginServices { registry, policies, delivery_wake, trust_keys })
}

/// Re-reads the Subscriptions every second (activating, erroring) and tells the policy engine
/// which types they watch, so writes of those types queue a match in the outbox (before a
/// Subscription's `active` status commits: see `Subscriptions::refresh`).
fn spawn_subscription_refresher(
    subscriptions: Arc<crate::subscriptions::Subscriptions>,
    policies: Arc<PolicyEngine>,
    store: Store,
) {
    tokio::spawn(async move {
        loop {
            let watch = |types| policies.set_subscribed(types);
            if let Err(error) = subscriptions.refresh(&store, &watch).await {
                tracing::warn!(%error, "subscriptions could not be re-read; retrying");
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}

/// The issuers whose tokens this server accepts: configured ones, plus the development issuer
/// (whose key `hearth token issue` uses) in dev mode.
pub fn token_verifier(settings: &ServeSettings) -> Result<TokenVerifier, StartError> {
    let mut issuers = Vec::new();
    for config in &settings.issuers {
        issuers.push(
            Issuer::from_jwks_file(&config.iss, &config.audience, &config.jwks_file)?
                .requiring(&config.require_amr, &config.require_acr),
        );
    }
    if settings.storage.dev {
        issuers.push(Issuer::development(&dev_token_key_path(&settings.storage.data_dir))?);
    }
    let client_certs = settings.client_certs.iter().map(|c| (c.name.clone(), c.scope.clone())).collect();
    Ok(TokenVerifier::new(issuers, settings.max_token_lifetime).with_client_certificates(client_certs))
}

/// Where dev mode keeps the key `hearth token issue` signs with.
pub fn dev_token_key_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("auth").join("dev-token-key.pem")
}

fn warn_dev_mode(settings: &StorageSettings) {
    let ca = DevTlsFiles::in_dir(&settings.data_dir).ca_cert;
    eprintln!(
        "\n\
         ************************************************************************\n\
         *  HEARTH IS RUNNING IN DEVELOPMENT MODE. DO NOT USE IT FOR REAL DATA.  *\n\
         *  The TLS certificate, its CA and the key-encryption key were         *\n\
         *  generated on this machine and sit in the data directory.            *\n\
         ************************************************************************\n\
         Data directory: {}\n\
         Trust the development CA with: curl --cacert {}\n",
        settings.data_dir.display(),
        ca.display()
    );
    tracing::warn!("development mode: generated TLS material, not for production data");
}
