//! The `hearth` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hearth_server::config::{LogFormat, ServeArgs, StorageArgs};
// The server's modules under the names the subcommands use (`crate::store`, `crate::audit`...).
use hearth_server::{audit, auth, compliance, config, crypto, fhir, plugins, serve, store, tls};
use tracing_subscriber::EnvFilter;

mod commands;

/// mimalloc instead of glibc's malloc: a write allocates and frees many small JSON values and
/// strings on several threads at once, and glibc's arenas spent a quarter of an import's CPU
/// time there (docs/benchmarks.md, case 6).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "hearth", version, about = "Hearth: an encrypted FHIR R4 server with WebAssembly policy plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the FHIR server over HTTPS.
    Serve(ServeArgs),
    /// Manage key-encryption keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check a configuration without starting the server.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Take an online, consistent backup into a new directory (with a checksummed manifest).
    Backup {
        #[command(flatten)]
        storage: StorageArgs,
        /// The new directory to write.
        dest: PathBuf,
    },
    /// Restore a backup onto an empty database (then run `hearth verify --manifest`).
    Restore {
        #[command(flatten)]
        storage: StorageArgs,
        /// The backup directory.
        src: PathBuf,
    },
    /// Check that every version decrypts, the audit chain verifies and counts match a manifest.
    Verify {
        #[command(flatten)]
        storage: StorageArgs,
        /// The manifest.json of the backup this database was restored from.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Apply pending database schema migrations (forward-only; back up first).
    Migrate(StorageArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Development tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// WebAssembly plugins: sign, and load into a running server.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Load NDJSON files (one resource per line) and Bundle files (transaction or batch, e.g.
    /// Synthea output) into a running server through its FHIR API, with progress; resumable:
    /// run the same command again to continue after an interruption. Refused lines go to an
    /// error report (file, line, OperationOutcome) and the import goes on.
    Import {
        /// A file, or a folder of .ndjson and .json files (imported in name order).
        input: PathBuf,
        /// The server, and a token that may write these types (e.g. system/*.cu).
        #[command(flatten)]
        server: ServerArgs,
        /// Resources per request (at most the server's --max-bundle-entries).
        #[arg(long, default_value_t = 200)]
        batch: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Stop after this many resources in this run (run again to continue).
        #[arg(long)]
        limit: Option<u64>,
        /// The progress file (default: INPUT.hearth-import.json).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The error report, appended to (default: INPUT.hearth-import-errors.ndjson).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Compliance evidence: a signed pack of figures and findings for auditors.
    #[command(subcommand)]
    Compliance(ComplianceCommand),
    /// Erase a patient by destroying its data key (crypto-shredding). Irreversible.
    Erase {
        #[command(flatten)]
        storage: StorageArgs,
        /// The Patient resource id.
        #[arg(long)]
        patient: String,
        /// Why (recorded with the erasure; no patient details).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Print the base64 Ed25519 signature of a component and its manifest.
    Sign {
        /// Ed25519 private key, PKCS#8 PEM.
        #[arg(long)]
        key: PathBuf,
        /// The manifest (TOML or JSON) the plugin will be loaded with.
        #[arg(long)]
        manifest: PathBuf,
        /// The component (.wasm).
        component: PathBuf,
    },
    /// Create a plugin skeleton that builds and passes its own test: NAME/ with the WIT
    /// contract, a manifest, a build script, a test script and a first test case.
    New {
        /// The language to write the plugin in.
        #[arg(long, value_enum)]
        lang: commands::plugin_new::Lang,
        /// `policy` (decide and validate) or `integration` (react to changes, convert messages).
        #[arg(long, default_value = "policy")]
        world: String,
        /// The plugin's name (a-z, 0-9, '-').
        name: String,
        /// Where to create it (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Check a signature from `hearth plugin sign` against trusted public keys; prints the key
    /// that signed, or fails.
    Verify {
        /// An Ed25519 public key (PEM or base64) to trust; repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// The manifest (TOML or JSON) the plugin will be loaded with.
        #[arg(long)]
        manifest: PathBuf,
        /// The file holding the base64 signature.
        #[arg(long)]
        signature: PathBuf,
        /// The component (.wasm).
        component: PathBuf,
    },
    /// List the plugins loaded in a running server (JSON).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Go back to the previous version of a plugin in a running server.
    Rollback {
        #[command(flatten)]
        server: ServerArgs,
        /// The plugin's name.
        name: String,
    },
    /// Run a component against recorded cases (one JSON file each) with the server's runtime
    /// and the manifest's limits, without a server: prints each answer, its timing and the
    /// plugin's peak memory; exits 1 when an answer differs from the case's `expect`. The case
    /// format is described in docs/plugins.md.
    Test {
        /// The manifest (TOML or JSON) the plugin will be loaded with.
        #[arg(long)]
        manifest: PathBuf,
        /// The folder of `*.json` cases.
        #[arg(long)]
        fixtures: PathBuf,
        /// The component (.wasm).
        component: PathBuf,
    },
    /// Upload a component with its manifest (and signature) to a running server.
    Load {
        #[command(flatten)]
        server: ServerArgs,
        /// The manifest (TOML or JSON); its `name` is the plugin's name.
        #[arg(long)]
        manifest: PathBuf,
        /// A file holding the base64 signature from `hearth plugin sign`.
        #[arg(long)]
        signature: Option<PathBuf>,
        /// The component (.wasm).
        component: PathBuf,
    },
}

/// Where a running server is, and the token to reach it with.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// The server's base URL, e.g. https://127.0.0.1:8443.
    #[arg(long, env = "HEARTH_SERVER")]
    server: String,
    /// A bearer token with the scopes the command needs (admin/plugins for plugin commands).
    #[arg(long, env = "HEARTH_TOKEN", hide_env_values = true)]
    token: String,
    /// PEM CA to trust for the server's certificate (default: the system's roots).
    #[arg(long)]
    cacert: Option<PathBuf>,
}

impl ServerArgs {
    fn admin(&self) -> commands::plugin::Server<'_> {
        commands::plugin::Server { url: &self.server, token: &self.token, ca: self.cacert.as_deref() }
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load keys, certificates and issuers the configuration names; report what is wrong.
    Check(ServeArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the hash chain and its signed checkpoints; exit 1 at the first break.
    Verify(StorageArgs),
    /// Write every entry as NDJSON to standard output.
    Export(StorageArgs),
}

#[derive(Debug, Subcommand)]
enum ComplianceCommand {
    /// Verify the audit chain, open every stored version, review access over a period, list
    /// the plugins and check the configuration (the same file and flags as `serve`), then write
    /// the evidence pack (evidence.json, evidence.html, signature.json) signed with the audit
    /// signing key. Works offline, on SQLite and PostgreSQL, while servers run.
    Report {
        #[command(flatten)]
        serve: ServeArgs,
        /// The folder to write the pack into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The access review's start: a date (2026-09-01) or an instant (default: 90 days
        /// before --until).
        #[arg(long)]
        since: Option<String>,
        /// The access review's end (default: now).
        #[arg(long)]
        until: Option<String>,
    },
    /// Check a pack: its signature by the audit key, its page and findings re-derived from its
    /// figures, and (unless --offline) its audit figures re-derived from the database.
    Verify {
        #[command(flatten)]
        storage: StorageArgs,
        /// The pack's folder.
        dir: PathBuf,
        /// The audit key's public key (base64, or a file holding it) to trust instead of the
        /// keyring's.
        #[arg(long)]
        public_key: Option<String>,
        /// Check the pack alone, without the database (needs --public-key).
        #[arg(long)]
        offline: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a token from the dev issuer key in the data directory (dev mode servers only).
    Issue {
        #[arg(long, env = "HEARTH_DATA_DIR", default_value = hearth_server::config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The subject (user or client) the token names.
        #[arg(long)]
        sub: String,
        /// Space-separated SMART scopes, e.g. "user/*.cruds" or "patient/Observation.rs".
        #[arg(long)]
        scope: String,
        /// Lifetime: 900s, 15m, 1h.
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// The patient in context, for patient/ scopes.
        #[arg(long)]
        patient: Option<String>,
        /// A role the token carries (repeatable), e.g. `break-glass`, `privacy-officer`.
        #[arg(long)]
        role: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create the first key-encryption key in a keyring directory.
    Init {
        #[arg(long, env = "HEARTH_KEYRING")]
        keyring: PathBuf,
    },
    /// Add a KEK version and re-wrap every data key under it, online; re-run to resume.
    Rotate(StorageArgs),
    /// Show KEK versions and the data keys each wraps.
    Status(StorageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hearth: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), String> = match cli.command {
        Command::Serve(args) => {
            let settings = match args.resolve() {
                Ok(settings) => settings,
                Err(error) => return usage_error(&error),
            };
            init_logging(settings.log_format);
            runtime.block_on(hearth_server::serve::run(settings)).map_err(|error| {
                tracing::error!(%error, "cannot start");
                error.to_string()
            })
        }
        Command::Token(TokenCommand::Issue { data_dir, sub, scope, ttl, patient, role }) => {
            commands::token::issue(&data_dir, &sub, &scope, &ttl, patient.as_deref(), &role)
                .map(|token| println!("{token}"))
                .map_err(|e| e.to_string())
        }
        Command::Plugin(PluginCommand::Sign { key, manifest, component }) => {
            commands::plugin::plugin_sign(&key, &manifest, &component)
                .map(|signature| println!("{signature}"))
                .map_err(|e| e.to_string())
        }
        Command::Plugin(PluginCommand::New { lang, world, name, dir }) => {
            commands::plugin_new::plugin_new(&dir, lang, &world, &name)
                .map(|(_, next)| println!("{next}"))
                .map_err(|e| e.to_string())
        }
        Command::Plugin(PluginCommand::Verify { keys, manifest, signature, component }) => {
            commands::plugin::plugin_verify(&keys, &manifest, &component, &signature)
                .map(|key| println!("signed by {key}"))
                .map_err(|e| e.to_string())
        }
        Command::Plugin(PluginCommand::List { server }) => runtime
            .block_on(server.admin().call(reqwest::Method::GET, "admin/plugins", None))
            .map(|listed| println!("{listed}"))
            .map_err(|e| e.to_string()),
        Command::Plugin(PluginCommand::Rollback { server, name }) => runtime
            .block_on(server.admin().call(reqwest::Method::POST, &format!("admin/plugins/{name}/rollback"), None))
            .map(|answer| println!("{answer}"))
            .map_err(|e| e.to_string()),
        Command::Plugin(PluginCommand::Test { manifest, fixtures, component }) => runtime
            .block_on(commands::plugin_test::plugin_test(&component, &manifest, &fixtures))
            .map(|report| print!("{report}"))
            .map_err(|e| e.to_string()),
        Command::Plugin(PluginCommand::Load { server, manifest, signature, component }) => {
            let request = commands::plugin::LoadRequest {
                server: server.admin(),
                manifest: &manifest,
                component: &component,
                signature: signature.as_deref(),
            };
            runtime
                .block_on(commands::plugin::plugin_load(&request))
                .map(|loaded| println!("{loaded}"))
                .map_err(|e| e.to_string())
        }
        Command::Keys(KeysCommand::Init { keyring }) => {
            init_logging(LogFormat::Text);
            commands::keys::init(&keyring).map_err(|e| e.to_string())
        }
        Command::Keys(KeysCommand::Rotate(storage)) => {
            with_storage(&runtime, &storage, |settings| async move { commands::keys::rotate(&settings).await })
        }
        Command::Keys(KeysCommand::Status(storage)) => {
            with_storage(&runtime, &storage, |settings| async move { commands::keys::status(&settings).await })
        }
        Command::Config(ConfigCommand::Check(args)) => commands::config::check(args).map_err(|e| e.to_string()),
        Command::Backup { storage, dest } => {
            with_storage(&runtime, &storage, |settings| async move { commands::backup::backup(&settings, &dest).await })
        }
        Command::Restore { storage, src } => {
            with_storage(&runtime, &storage, |settings| async move { commands::backup::restore(&settings, &src).await })
        }
        Command::Verify { storage, manifest } => with_storage(&runtime, &storage, |settings| async move {
            commands::backup::verify(&settings, manifest.as_deref()).await
        }),
        Command::Migrate(storage) => {
            with_storage(&runtime, &storage, |settings| async move { commands::migrate::run(&settings).await })
        }
        Command::Audit(AuditCommand::Verify(storage)) => {
            with_storage(&runtime, &storage, |settings| async move { commands::audit::verify(&settings).await })
        }
        Command::Audit(AuditCommand::Export(storage)) => {
            with_storage(&runtime, &storage, |settings| async move { commands::audit::export(&settings).await })
        }
        Command::Import { input, server, batch, parallel, limit, state, report } => {
            let target = commands::import::ImportTarget {
                url: &server.server,
                token: &server.token,
                ca: server.cacert.as_deref(),
            };
            let options = commands::import::ImportOptions {
                batch: batch.clamp(1, 10_000),
                parallel: parallel.clamp(1, 64),
                limit,
                state,
                report,
            };
            match runtime.block_on(commands::import::import(&input, &target, &options)) {
                Ok(summary) => {
                    let rate = (summary.loaded + summary.failed) as f64 / summary.seconds.max(0.001);
                    println!(
                        "imported {} resources from {} files in {:.1} s ({rate:.0} resources/s); {} failed; {} already loaded by an earlier run",
                        summary.loaded, summary.files, summary.seconds, summary.failed, summary.resumed
                    );
                    if summary.stopped {
                        println!(
                            "stopped at --limit; progress is in {}: run the same command again to continue",
                            summary.state.display()
                        );
                    }
                    if summary.failed > 0 {
                        Err(format!(
                            "{} resources were not loaded; each is in {} with its line and the server's reason. Fix them and import that report's lines again",
                            summary.failed,
                            summary.report.display()
                        ))
                    } else {
                        Ok(())
                    }
                }
                Err(error) => Err(error.to_string()),
            }
        }
        Command::Compliance(ComplianceCommand::Report { serve, out, since, until }) => {
            init_logging(LogFormat::Text);
            runtime
                .block_on(commands::compliance::report(serve, &out, since.as_deref(), until.as_deref()))
                .map_err(|e| e.to_string())
        }
        Command::Compliance(ComplianceCommand::Verify { storage, dir, public_key, offline }) => {
            let settings = if offline { Ok(None) } else { storage.resolve().map(Some).map_err(|e| e.to_string()) };
            settings.and_then(|settings| {
                runtime
                    .block_on(commands::compliance::verify(settings, &dir, public_key.as_deref()))
                    .map_err(|e| e.to_string())
            })
        }
        Command::Erase { storage, patient, reason } => with_storage(&runtime, &storage, |settings| async move {
            commands::erase::patient(&settings, &patient, &reason).await
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("hearth: {message}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("hearth: {error}");
    ExitCode::from(2)
}

/// Resolves storage settings and runs a maintenance command on them.
fn with_storage<F, Fut>(runtime: &tokio::runtime::Runtime, storage: &StorageArgs, command: F) -> Result<(), String>
where
    F: FnOnce(hearth_server::config::StorageSettings) -> Fut,
    Fut: std::future::Future<Output = Result<(), commands::CommandError>>,
{
    let settings = storage.resolve().map_err(|e| e.to_string())?;
    init_logging(LogFormat::Text);
    runtime.block_on(command(settings)).map_err(|e| e.to_string())
}

/// Logs go to standard error; the level comes from `HEARTH_LOG` (or `RUST_LOG`), default info.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("HEARTH_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => builder.init(),
    }
}
