//! Starts the real `hearth` binary over TLS on a fresh SQLite file or a fresh PostgreSQL
//! database, and gives tests an HTTPS client that trusts the server's generated dev CA.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

/// The PostgreSQL server used for tests: a maintenance database on it, from which each test
/// creates (and drops) its own database.
pub fn postgres_admin_url() -> String {
    std::env::var("HEARTH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Generates one test per database from an `async fn NAME(db: Db)`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::harness::Db::Sqlite).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::harness::Db::Postgres).await;
                }
            }
        )*
    };
}

/// A PostgreSQL database created for one test and dropped when this is dropped.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hearth_e2e_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap()
        );
        admin_sql(&format!("CREATE DATABASE {name}"));
        let admin = postgres_admin_url();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        PgDatabase { url: format!("{base}/{name}"), name }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        admin_sql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Runs one statement on the admin database, from a thread of its own so it works both inside
/// and outside an async runtime (Drop).
pub fn admin_sql(sql: &str) {
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
                .await
                .expect("PostgreSQL must be reachable for the end-to-end tests (HEARTH_TEST_POSTGRES_URL)");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.expect("admin statement");
        });
    })
    .join()
    .expect("admin thread");
}

/// One running `hearth serve` process.
pub struct Server {
    pub db: Db,
    pub base: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    /// The CA the clients trust.
    pub ca: PathBuf,
    child: Child,
    log_path: PathBuf,
    /// Owns the data directory while the server lives.
    _dir: Option<tempfile::TempDir>,
    pg: Option<PgDatabase>,
}

/// How to start a server.
#[derive(Default)]
pub struct Launch {
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Do not pass --database-url (the test provides it another way, e.g. a config file).
    pub no_database_flag: bool,
    /// Do not pass --dev.
    pub no_dev_flag: bool,
    /// The CA the client trusts; default: the dev CA in the server's data directory.
    pub ca: Option<PathBuf>,
    /// The bearer token the client sends; default (dev mode): a `user/*.cruds` dev token.
    pub token: Option<String>,
    /// Use this data directory (default: a new temporary one).
    pub data_dir: Option<PathBuf>,
    /// Use this PostgreSQL database (default: a new one, for `Db::Postgres`).
    pub pg: Option<PgDatabase>,
}

/// The scopes of the token test clients carry unless a test asks for others.
pub const DEFAULT_SCOPE: &str = "user/*.cruds";

impl Server {
    pub async fn start(db: Db) -> Server {
        Server::launch(db, Launch::default()).await
    }

    pub async fn launch(db: Db, mut launch: Launch) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = launch.data_dir.take().unwrap_or_else(|| dir.path().join("data"));
        let pg = launch.pg.take().or_else(|| (db == Db::Postgres).then(PgDatabase::create));
        Server::spawn(db, data_dir, Some(dir), pg, launch)
    }

    fn spawn(
        db: Db,
        data_dir: PathBuf,
        dir: Option<tempfile::TempDir>,
        pg: Option<PgDatabase>,
        launch: Launch,
    ) -> Server {
        let log_path = data_dir.with_file_name(format!("server-{}.log", uuid::Uuid::new_v4().simple()));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_hearth"));
        command.arg("serve").arg("--data-dir").arg(&data_dir).args(["--listen", "127.0.0.1:0"]);
        if !launch.no_dev_flag {
            command.arg("--dev");
        }
        if let (Some(pg), false) = (&pg, launch.no_database_flag) {
            command.args(["--database-url", &pg.url]);
        }
        command.args(&launch.extra_args);
        command.env_remove("HEARTH_CONFIG").env_remove("HEARTH_DATABASE_URL").env_remove("HEARTH_DEV");
        // Tests refuse many requests from one address on purpose; the per-address limit has its
        // own test (audit.rs), which sets it.
        command.env("HEARTH_REFUSALS_PER_ADDRESS", "0");
        for (key, value) in &launch.env {
            command.env(key, value);
        }
        let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().expect("start hearth");
        let base = read_listening_line(&mut child, &log_path);
        let ca = launch.ca.unwrap_or_else(|| data_dir.join("tls/ca.pem"));
        let token = match (launch.token, launch.no_dev_flag) {
            (Some(token), _) => Some(token),
            (None, false) => Some(dev_token(&data_dir, DEFAULT_SCOPE, None)),
            (None, true) => None,
        };
        let client = client_trusting(&ca, false, token.as_deref());
        Server { db, base, data_dir, client, ca, child, log_path, _dir: dir, pg }
    }

    /// Stops this server with SIGTERM and starts a new one on the same data (and database).
    pub async fn restart(mut self, launch: Launch) -> Server {
        self.terminate().expect("server exits cleanly on SIGTERM");
        let dir = self._dir.take();
        let pg = self.pg.take();
        Server::spawn(self.db, self.data_dir.clone(), dir, pg, launch)
    }

    /// A dev token for this server with `scope` (and a patient in context).
    pub fn token(&self, scope: &str, patient: Option<&str>) -> String {
        dev_token(&self.data_dir, scope, patient)
    }

    /// A client whose token names subject `sub` with `scope`.
    pub fn client_as(&self, sub: &str, scope: &str) -> reqwest::Client {
        self.client_with(Some(&dev_token_for(&self.data_dir, sub, scope, None, &[])))
    }

    /// A client for this server carrying `token` (or none).
    pub fn client_with(&self, token: Option<&str>) -> reqwest::Client {
        client_trusting(&self.ca, false, token)
    }

    /// Starts a new server on the same data after this one was killed (SIGKILL).
    pub async fn restart_after_kill(self) -> Server {
        self.restart_after_kill_with(Launch::default()).await
    }

    /// [`Server::restart_after_kill`] with launch options (e.g. the same extra arguments).
    pub async fn restart_after_kill_with(mut self, launch: Launch) -> Server {
        let status = self.child.wait().expect("wait for the killed server");
        assert!(!status.success(), "the server was expected to have been killed");
        let dir = self._dir.take();
        let pg = self.pg.take();
        Server::spawn(self.db, self.data_dir.clone(), dir, pg, launch)
    }

    /// Sends SIGTERM and waits for the exit; Ok if it exited successfully within 20 s.
    pub fn terminate(&mut self) -> Result<(), String> {
        signal(self.child.id(), "TERM");
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return if status.success() { Ok(()) } else { Err(format!("exited with {status}")) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("still running 20 s after SIGTERM".to_owned())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The database this server uses, as a URL any sqlx client (or `hearth` command) takes.
    /// The PostgreSQL database's name, for a server on PostgreSQL.
    pub fn pg_name(&self) -> Option<&str> {
        self.pg.as_ref().map(|pg| pg.name.as_str())
    }

    pub fn database_url(&self) -> String {
        match &self.pg {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("hearth.db").display()),
        }
    }

    /// The keyring directory of this (dev mode) server.
    pub fn keyring(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    /// Runs a `hearth` maintenance command against this server's database, keyring and data directory.
    pub fn hearth(&self, args: &[&str]) -> std::process::Output {
        let keyring = self.keyring();
        let mut full: Vec<&str> = args.to_vec();
        let url = self.database_url();
        // The server's own data directory, as an operator would pass it (otherwise the command
        // would create ./hearth-data in the test's working directory).
        let data_dir = self.data_dir.to_str().unwrap();
        full.extend(["--database-url", &url, "--keyring", keyring.to_str().unwrap(), "--data-dir", data_dir]);
        hearth_command(&full)
    }

    /// A direct connection to the server's database, bypassing Hearth (to inspect or tamper).
    pub async fn raw_connection(&self) -> sqlx::AnyConnection {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.database_url()).await.expect("direct database connection")
    }

    /// Every byte the database holds on disk (SQLite: the database, WAL and shared-memory
    /// files; PostgreSQL: the database's table files after a checkpoint) plus, for PostgreSQL,
    /// what a backup would hold (`pg_dump`).
    pub async fn raw_database_bytes(&self) -> Vec<u8> {
        match &self.pg {
            Some(pg) => {
                let output = Command::new("pg_dump").arg(&pg.url).output().expect("pg_dump runs");
                assert!(output.status.success(), "pg_dump: {}", String::from_utf8_lossy(&output.stderr));
                let mut bytes = output.stdout;
                let mut conn = self.raw_connection().await;
                use sqlx::Row;
                sqlx::query("CHECKPOINT").execute(&mut conn).await.expect("CHECKPOINT (needs a superuser)");
                let data_dir: String = sqlx::query("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
                    .get(0);
                let oid: String = sqlx::query("SELECT oid::text FROM pg_database WHERE datname = current_database()")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
                    .get(0);
                let base = Path::new(&data_dir).join("base").join(oid);
                for entry in std::fs::read_dir(&base).unwrap_or_else(|e| panic!("read {}: {e}", base.display())) {
                    let path = entry.unwrap().path();
                    if path.is_file() {
                        bytes.extend(std::fs::read(path).unwrap());
                    }
                }
                bytes
            }
            None => {
                let mut bytes = Vec::new();
                for entry in std::fs::read_dir(&self.data_dir).unwrap() {
                    let entry = entry.unwrap();
                    if entry.file_name().to_string_lossy().starts_with("hearth.db") {
                        bytes.extend(std::fs::read(entry.path()).unwrap());
                    }
                }
                bytes
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::from(self.client.get(self.url(path)).send().await.expect("GET")).await
    }

    /// The request is built before the returned future runs, so `path` and `body` may be
    /// temporaries.
    pub fn post<'s>(&'s self, path: &str, body: &Value) -> impl Future<Output = Reply> + use<'s> {
        self.post_with(path, body, &[])
    }

    pub fn put<'s>(&'s self, path: &str, body: &Value) -> impl Future<Output = Reply> + use<'s> {
        self.put_with(path, body, &[])
    }

    /// A FHIR JSON POST with extra headers (which may replace the content type).
    pub fn post_with<'s>(
        &'s self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> impl Future<Output = Reply> + use<'s> {
        self.send(with_headers(self.client.post(self.url(path)), headers).body(body.to_string()))
    }

    /// A FHIR JSON PUT with extra headers (which may replace the content type).
    pub fn put_with<'s>(
        &'s self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> impl Future<Output = Reply> + use<'s> {
        self.send(with_headers(self.client.put(self.url(path)), headers).body(body.to_string()))
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(self.url(path))).await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        Reply::from(request.send().await.expect("request")).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- server log ({:?}) ----\n{}", self.db, self.log());
        }
    }
}

/// Adds the FHIR JSON content type, then `headers` (which may replace it).
fn with_headers(mut request: reqwest::RequestBuilder, headers: &[(&str, &str)]) -> reqwest::RequestBuilder {
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
        request = request.header("content-type", "application/fhir+json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

/// A raw HTTP/1.1-over-TLS connection to `server` (trusting its CA), for tests that send bytes
/// no HTTP client would.
pub async fn raw_tls(server: &Server) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::fs::read(&server.ca).unwrap().as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let port: u16 = server.base.rsplit(':').next().unwrap().parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Runs the `hearth` binary with `args` and collects its output (bounded to 5 minutes).
pub fn hearth_command(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env_remove("HEARTH_CONFIG")
        .env_remove("HEARTH_DATABASE_URL")
        .env_remove("HEARTH_DEV")
        .env_remove("HEARTH_KEKS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hearth");
    for _ in 0..3000 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("hearth {args:?} did not finish within 5 minutes");
}

/// A `python3` command for the Python tools the tests drive (schemathesis, componentize-py,
/// requests): `HEARTH_TEST_PYTHON` if set, else the project's venv (`.venv`, which `tests/run`
/// creates and fills from the requirements files), else `python3` from the PATH.
pub fn python3() -> Command {
    Command::new(python3_program())
}

fn python3_program() -> std::ffi::OsString {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").join(".venv/bin/python3");
    match std::env::var_os("HEARTH_TEST_PYTHON") {
        Some(python) => python,
        None if venv.exists() => venv.into_os_string(),
        None => "python3".into(),
    }
}

/// `PATH` with the folder of [`python3`]'s interpreter first, for scripts that run `python3`
/// themselves (the Python plugin skeleton's build script).
pub fn path_with_python() -> std::ffi::OsString {
    let program = PathBuf::from(python3_program());
    let mut folders: Vec<PathBuf> =
        program.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf).into_iter().collect();
    folders.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(folders).expect("PATH folders")
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

fn read_listening_line(child: &mut Child, log_path: &Path) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.split("FHIR base ").nth(1) {
                let _ = tx.send(rest.trim().trim_end_matches(')').to_owned());
                break;
            }
            line.clear();
        }
        // Keep draining so the server never blocks on a full pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("hearth did not start; log:\n{}", std::fs::read_to_string(log_path).unwrap_or_default())
    })
}

/// Mints a dev token with `hearth token issue` for the server on `data_dir`.
pub fn dev_token(data_dir: &Path, scope: &str, patient: Option<&str>) -> String {
    dev_token_with_roles(data_dir, scope, patient, &[])
}

/// [`dev_token`] with roles (`--role`).
pub fn dev_token_with_roles(data_dir: &Path, scope: &str, patient: Option<&str>, roles: &[&str]) -> String {
    dev_token_for(data_dir, "e2e-tester", scope, patient, roles)
}

/// A dev token for subject `sub`.
pub fn dev_token_for(data_dir: &Path, sub: &str, scope: &str, patient: Option<&str>, roles: &[&str]) -> String {
    let data = data_dir.to_str().unwrap();
    let mut args = vec!["token", "issue", "--data-dir", data, "--sub", sub, "--scope", scope, "--ttl", "1h"];
    if let Some(patient) = patient {
        args.extend(["--patient", patient]);
    }
    for role in roles {
        args.extend(["--role", role]);
    }
    let output = hearth_command(&args);
    assert!(output.status.success(), "token issue: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// An HTTPS client that trusts only the given CA certificate and sends `token`, if any.
pub fn client_trusting(ca_pem: &Path, http1_only: bool, token: Option<&str>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_pem).expect("the dev CA exists")).expect("CA parses");
    let mut builder = reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(60));
    if let Some(token) = token {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("token header"));
        builder = builder.default_headers(headers);
    }
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().expect("client")
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub async fn from(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body").to_vec();
        Reply { status, headers, bytes }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.bytes)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and returns the JSON body.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", String::from_utf8_lossy(&self.bytes));
        if self.bytes.is_empty() { Value::Null } else { self.json() }
    }

    /// Asserts an OperationOutcome error with this status and issue code; returns diagnostics.
    pub fn expect_outcome(&self, status: u16, code: &str) -> String {
        let body = self.expect(status);
        assert!(
            self.header("content-type").is_some_and(|t| t.starts_with("application/fhir+json")),
            "errors are application/fhir+json, got {:?}",
            self.header("content-type")
        );
        assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
        assert_eq!(body["issue"][0]["severity"], "error", "{body}");
        assert_eq!(body["issue"][0]["code"], code, "{body}");
        body["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_owned()
    }
}

/// A token issuer outside Hearth, as production has: an ES256 key whose public half is
/// published in a JWKS file the server is pointed at.
pub struct TestIssuer {
    pub iss: String,
    pub audience: String,
    pub jwks_file: PathBuf,
    signing_pem: String,
}

impl TestIssuer {
    pub fn create(dir: &Path, iss: &str, audience: &str) -> TestIssuer {
        use base64::Engine;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = key.public_key_raw(); // 0x04 || x || y
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "test-1",
            "x": b64(&point[1..33]), "y": b64(&point[33..65])
        }]});
        let jwks_file = dir.join(format!("jwks-{}.json", uuid::Uuid::new_v4().simple()));
        std::fs::write(&jwks_file, jwks.to_string()).unwrap();
        TestIssuer { iss: iss.to_owned(), audience: audience.to_owned(), jwks_file, signing_pem: key.serialize_pem() }
    }

    /// The flags that make a server trust this issuer.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--jwt-issuer".into(),
            self.iss.clone(),
            "--jwt-audience".into(),
            self.audience.clone(),
            "--jwks-file".into(),
            self.jwks_file.display().to_string(),
        ]
    }

    /// Signs `claims` (any JSON object) with this issuer's key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("test-1".into());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.signing_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// A well-formed token for `sub` with `scope`, valid for ten minutes.
    pub fn token(&self, sub: &str, scope: &str) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        self.sign(&serde_json::json!({
            "iss": self.iss, "aud": self.audience, "sub": sub, "scope": scope, "iat": now, "exp": now + 600
        }))
    }
}

/// The current UTC time as a FHIR instant to the second (`2026-11-28T10:00:00Z`).
pub fn fhir_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}
