//! `hearth import FILE_OR_DIR --server URL --token T`: loads NDJSON files (one resource per
//! line, e.g. a Bulk Data export) and Bundle files (transaction or batch Bundles, e.g. Synthea
//! output) into a running server over its FHIR API, so every resource is authorised,
//! validated, indexed, audited and evented exactly like any other write. This is the
//! documented equivalent of `$import` for remote loads.
//!
//! - NDJSON lines go in Bundles of `--batch` entries, each as `PUT {type}/{id}`, sent as one
//!   `transaction` (one commit), and again as a `batch` when anything in it is refused: ids
//!   are kept (references between files stay valid); a resource without an id gets one derived
//!   from its file, line and content, so a replay writes the same resource again instead of a
//!   duplicate.
//! - A line that is not JSON, or that the server refuses, is written to the error report
//!   (file, line number, OperationOutcome) and the import goes on.
//! - Progress is saved after every `--parallel` group of batches in a state file; running the same command again
//!   continues where the last run stopped (after a crash, Ctrl-C or `--limit`). At most the
//!   `--parallel` batches in flight are sent twice, which PUT makes harmless.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use sha2::Digest;

/// Where to send, and how.
pub struct ImportTarget<'a> {
    /// The server's FHIR base URL, e.g. `https://127.0.0.1:8443`.
    pub url: &'a str,
    /// A bearer token allowed to write (e.g. `system/*.cu` or `user/*.cu`).
    pub token: &'a str,
    /// A PEM CA to trust instead of the system's roots.
    pub ca: Option<&'a Path>,
}

pub struct ImportOptions {
    /// Resources per request.
    pub batch: usize,
    /// Requests in flight at once.
    pub parallel: usize,
    /// Stop after this many resources in this run (rerun to continue).
    pub limit: Option<u64>,
    /// The progress file (default: `INPUT.hearth-import.json`).
    pub state: Option<PathBuf>,
    /// The error report (default: `INPUT.hearth-import-errors.ndjson`).
    pub report: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Input(String),
    #[error(
        "cannot reach {url}: {reason}. Check --server and that the server runs, then rerun the same command to continue"
    )]
    Unreachable { url: String, reason: String },
    #[error("the server refused the import ({status}): {message}{hint}")]
    Refused { status: u16, message: String, hint: String },
}

/// What a run did.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub files: usize,
    pub loaded: u64,
    pub failed: u64,
    /// Lines or files skipped because an earlier run loaded them.
    pub resumed: u64,
    /// `--limit` stopped the run before the end.
    pub stopped: bool,
    pub report: PathBuf,
    pub state: PathBuf,
    pub seconds: f64,
}

/// Progress of every input file, saved after each batch.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct State {
    /// File path -> lines (NDJSON) or entries handled; `u64::MAX` when the file is done.
    done: std::collections::BTreeMap<String, u64>,
}

const FILE_DONE: u64 = u64::MAX;

fn sibling(input: &Path, suffix: &str) -> PathBuf {
    let name = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "import".into());
    input.with_file_name(format!("{name}{suffix}"))
}

fn input_files(input: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let unreadable = |e: std::io::Error| ImportError::Input(format!("cannot read {}: {e}", input.display()));
    if input.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(input)
            .map_err(unreadable)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "ndjson" || x == "json"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ImportError::Input(format!("{} holds no .ndjson or .json files to import", input.display())));
        }
        Ok(files)
    } else if input.is_file() {
        Ok(vec![input.to_owned()])
    } else {
        Err(ImportError::Input(format!("{} does not exist", input.display())))
    }
}

/// What sending some lines did: how many were stored, and each refused line with its report
/// entry.
#[derive(Debug, Default)]
struct Sent {
    loaded: u64,
    refused: Vec<(u64, Value)>,
}

impl Sent {
    fn add(&mut self, other: Sent) {
        self.loaded += other.loaded;
        self.refused.extend(other.refused);
    }
}

fn refusal(line: &(u64, Value), status: u16, outcome: Value) -> (u64, Value) {
    let (number, resource) = line;
    (*number, json!({"id": resource["id"], "status": status, "outcome": outcome}))
}

/// A local OperationOutcome for input the server never saw.
fn local_outcome(code: &str, message: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": message}]})
}

/// An id for a resource that has none: stable for the same file, line and content.
fn derived_id(file: &str, line: u64, text: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{file}\n{line}\n{text}").as_bytes());
    crate::crypto::hex(&digest[..16])
}

struct Run<'a> {
    target: &'a ImportTarget<'a>,
    client: reqwest::Client,
    options: &'a ImportOptions,
    state: State,
    state_path: PathBuf,
    report: std::io::BufWriter<std::fs::File>,
    summary: ImportSummary,
    bar: ProgressBar,
}

impl Run<'_> {
    fn save_state(&self) -> Result<(), ImportError> {
        let text = serde_json::to_vec_pretty(&self.state).unwrap_or_default();
        let temporary = self.state_path.with_extension("tmp");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &self.state_path))
            .map_err(|e| ImportError::Input(format!("cannot save progress to {}: {e}", self.state_path.display())))
    }

    fn report_failure(&mut self, file: &str, line: Option<u64>, entry: Value) -> Result<(), ImportError> {
        self.summary.failed += 1;
        let mut record = json!({"file": file, "line": line});
        if let (Some(record), Some(entry)) = (record.as_object_mut(), entry.as_object()) {
            record.extend(entry.clone());
        }
        writeln!(self.report, "{record}")
            .and_then(|()| self.report.flush())
            .map_err(|e| ImportError::Input(format!("cannot write the error report: {e}")))
    }

    fn budget_left(&self) -> Option<u64> {
        self.options.limit.map(|limit| limit.saturating_sub(self.summary.loaded + self.summary.failed))
    }

    /// POSTs a Bundle to the base URL; the response Bundle, or why the whole request failed.
    async fn post_bundle(&self, bundle: &Value) -> Result<Result<Value, (u16, Value)>, ImportError> {
        let url = self.target.url.trim_end_matches('/').to_owned();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .client
                .post(&url)
                .bearer_auth(self.target.token)
                .header("content-type", "application/fhir+json")
                .header("accept", "application/fhir+json")
                .header("prefer", "return=minimal")
                .body(bundle.to_string())
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(e) if attempt < 4 => {
                    tracing::warn!(error = %e, attempt, "import request failed; retrying");
                    tokio::time::sleep(Duration::from_secs(attempt)).await;
                    continue;
                }
                Err(e) => return Err(ImportError::Unreachable { url, reason: e.to_string() }),
            };
            let status = response.status().as_u16();
            let body: Value = json_value(response).await;
            match status {
                200..=299 => return Ok(Ok(body)),
                // Busy or briefly unavailable: wait as asked, then send the same batch again.
                429 | 503 if attempt < 6 => tokio::time::sleep(Duration::from_secs(attempt)).await,
                _ => return Ok(Err((status, body))),
            }
        }
    }

    fn whole_request_refused(status: u16, body: &Value) -> ImportError {
        let message = body["issue"][0]["diagnostics"].as_str().unwrap_or("no reason given").to_owned();
        let hint = match status {
            401 => "; the token is missing, expired or not trusted: issue a fresh one and rerun".to_owned(),
            403 => "; the token needs write scopes for these types (e.g. system/*.cu)".to_owned(),
            413 => "; lower --batch, or raise the server's --max-body-bytes".to_owned(),
            _ => "; rerun the same command to continue where it stopped".to_owned(),
        };
        ImportError::Refused { status, message, hint }
    }

    /// Sends one batch of lines and says what became of each. A batch the server refuses as
    /// a whole for its content (e.g. an entry whose id cannot be part of a URL) is sent again
    /// one entry at a time, so only the bad entries are reported.
    async fn send_lines(&self, lines: &[(u64, Value)]) -> Result<Sent, ImportError> {
        let (status, outcome) = match self.send_batch(lines).await? {
            Ok(sent) => return Ok(sent),
            Err(refused) => refused,
        };
        if lines.len() == 1 {
            return Ok(Sent { loaded: 0, refused: vec![refusal(&lines[0], status, outcome)] });
        }
        let mut sent = Sent::default();
        for line in lines {
            match self.send_batch(std::slice::from_ref(line)).await? {
                Ok(one) => sent.add(one),
                Err((status, outcome)) => sent.refused.push(refusal(line, status, outcome)),
            }
        }
        Ok(sent)
    }

    /// One request for `lines`: what became of each, or `Err((status, outcome))` when the
    /// server refused the batch whole for its content.
    async fn send_batch(&self, lines: &[(u64, Value)]) -> Result<Result<Sent, (u16, Value)>, ImportError> {
        let entries: Vec<Value> = lines
            .iter()
            .map(|(_, resource)| {
                let url = format!(
                    "{}/{}",
                    resource["resourceType"].as_str().unwrap_or(""),
                    resource["id"].as_str().unwrap_or("")
                );
                json!({"resource": resource, "request": {"method": "PUT", "url": url}})
            })
            .collect();
        // First as one transaction (one commit for the whole batch); if anything in it is
        // refused, nothing was stored, and the batch goes again as a `batch` Bundle, whose
        // entries succeed or fail one by one.
        let mut bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        if lines.len() > 1 {
            match self.post_bundle(&bundle).await? {
                Ok(_) => return Ok(Ok(Sent { loaded: lines.len() as u64, refused: Vec::new() })),
                Err((400 | 404 | 409 | 412 | 422, _)) => {}
                Err((status, body)) => return Err(Self::whole_request_refused(status, &body)),
            }
        }
        bundle["type"] = json!("batch");
        let answer = match self.post_bundle(&bundle).await? {
            Ok(answer) => answer,
            Err((status @ (400 | 422), body)) => return Ok(Err((status, body))),
            Err((status, body)) => return Err(Self::whole_request_refused(status, &body)),
        };
        let responses = answer["entry"].as_array().cloned().unwrap_or_default();
        let mut sent = Sent::default();
        for (index, line) in lines.iter().enumerate() {
            let response = responses.get(index).map(|e| e["response"].clone()).unwrap_or(Value::Null);
            let status: u16 = response["status"]
                .as_str()
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if (200..300).contains(&status) {
                sent.loaded += 1;
            } else {
                let outcome = if response["outcome"].is_object() {
                    response["outcome"].clone()
                } else {
                    local_outcome("exception", "the server gave no answer for this entry")
                };
                sent.refused.push(refusal(line, status, outcome));
            }
        }
        Ok(Ok(sent))
    }

    /// Counts and reports what sending some lines of `file` did.
    fn apply(&mut self, file: &str, sent: Sent) -> Result<(), ImportError> {
        self.summary.loaded += sent.loaded;
        for (line, entry) in sent.refused {
            self.report_failure(file, Some(line), entry)?;
        }
        Ok(())
    }

    /// Sends the batches in `pending` at once, then counts and reports their outcomes in order.
    async fn flush(&mut self, file: &str, pending: &mut Vec<Vec<(u64, Value)>>) -> Result<(), ImportError> {
        let results = futures_util::future::join_all(pending.iter().map(|batch| self.send_lines(batch))).await;
        pending.clear();
        for sent in results {
            self.apply(file, sent?)?;
        }
        self.bar.set_message(format!("{} loaded, {} failed", self.summary.loaded, self.summary.failed));
        Ok(())
    }

    async fn import_ndjson(&mut self, path: &Path) -> Result<(), ImportError> {
        let file = path.display().to_string();
        let done = self.state.done.get(&file).copied().unwrap_or(0);
        if done == FILE_DONE {
            self.summary.resumed += 1;
            self.bar.inc(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0));
            return Ok(());
        }
        let reader = std::fs::File::open(path).map_err(|e| ImportError::Input(format!("cannot open {file}: {e}")))?;
        let mut reader = std::io::BufReader::new(reader);
        let mut line_no = 0u64;
        let mut batch: Vec<(u64, Value)> = Vec::new();
        // Full batches waiting to be sent together, `--parallel` at a time.
        let mut pending: Vec<Vec<(u64, Value)>> = Vec::new();
        let mut text = String::new();
        loop {
            let unsent = batch.len() + pending.iter().map(Vec::len).sum::<usize>();
            if self.budget_left() == Some(unsent as u64) {
                self.summary.stopped = true;
                break;
            }
            text.clear();
            let read =
                reader.read_line(&mut text).map_err(|e| ImportError::Input(format!("cannot read {file}: {e}")))?;
            if read == 0 {
                break;
            }
            line_no += 1;
            self.bar.inc(read as u64);
            if line_no <= done {
                self.summary.resumed += 1;
                continue;
            }
            let trimmed = text.trim();
            if trimmed.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(trimmed) {
                Ok(mut resource) if resource["resourceType"].as_str().is_some_and(|t| !t.is_empty()) => {
                    if resource["id"].as_str().is_none_or(str::is_empty) {
                        resource["id"] = json!(derived_id(&file, line_no, trimmed));
                    }
                    batch.push((line_no, resource));
                }
                Ok(_) => {
                    let outcome =
                        local_outcome("structure", "the line is JSON but not a FHIR resource (no resourceType)");
                    self.report_failure(&file, Some(line_no), json!({"status": null, "outcome": outcome}))?;
                }
                Err(e) => {
                    let outcome = local_outcome("structure", &format!("the line is not valid JSON: {e}"));
                    self.report_failure(&file, Some(line_no), json!({"status": null, "outcome": outcome}))?;
                }
            }
            if batch.len() >= self.options.batch {
                pending.push(std::mem::take(&mut batch));
                if pending.len() >= self.options.parallel {
                    self.flush(&file, &mut pending).await?;
                    self.state.done.insert(file.clone(), line_no);
                    self.save_state()?;
                }
            }
        }
        if !batch.is_empty() {
            pending.push(batch);
        }
        self.flush(&file, &mut pending).await?;
        let finished = if self.summary.stopped { line_no.max(done) } else { FILE_DONE };
        self.state.done.insert(file, finished);
        self.save_state()
    }

    async fn import_bundle(&mut self, path: &Path) -> Result<(), ImportError> {
        let file = path.display().to_string();
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if self.state.done.get(&file) == Some(&FILE_DONE) {
            self.summary.resumed += 1;
            self.bar.inc(size);
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(|e| ImportError::Input(format!("cannot read {file}: {e}")))?;
        let parsed: Result<Value, _> = serde_json::from_str(&text);
        let value = match parsed {
            Ok(value) if value["resourceType"].is_string() => value,
            Ok(_) => {
                let outcome = local_outcome("structure", "the file is JSON but not a FHIR resource or Bundle");
                self.report_failure(&file, None, json!({"status": null, "outcome": outcome}))?;
                return self.finish_file(file, size);
            }
            Err(e) => {
                let outcome = local_outcome("structure", &format!("the file is not valid JSON: {e}"));
                self.report_failure(&file, None, json!({"status": null, "outcome": outcome}))?;
                return self.finish_file(file, size);
            }
        };
        let bundle_type = value["type"].as_str().unwrap_or("");
        if value["resourceType"] == "Bundle" && matches!(bundle_type, "transaction" | "batch") {
            let entries = value["entry"].as_array().map_or(0, Vec::len) as u64;
            match self.post_bundle(&value).await? {
                Ok(answer) if bundle_type == "transaction" => {
                    self.summary.loaded += entries;
                    let _ = answer;
                }
                Ok(answer) => {
                    for (index, entry) in answer["entry"].as_array().into_iter().flatten().enumerate() {
                        let status = entry["response"]["status"].as_str().unwrap_or("");
                        if status.starts_with('2') {
                            self.summary.loaded += 1;
                        } else {
                            let record =
                                json!({"entry": index, "status": status, "outcome": entry["response"]["outcome"]});
                            self.report_failure(&file, None, record)?;
                        }
                    }
                }
                Err((status, body)) if matches!(status, 400 | 404 | 409 | 412 | 422) => {
                    // A transaction is all or nothing: the whole file is reported.
                    self.report_failure(&file, None, json!({"status": status, "outcome": body}))?;
                }
                Err((status, body)) => return Err(Self::whole_request_refused(status, &body)),
            }
        } else {
            // Any other resource or Bundle: its resources, like NDJSON lines.
            let resources: Vec<Value> = if value["resourceType"] == "Bundle" {
                value["entry"].as_array().into_iter().flatten().filter_map(|e| e.get("resource").cloned()).collect()
            } else {
                vec![value]
            };
            let lines: Vec<(u64, Value)> = resources
                .into_iter()
                .enumerate()
                .map(|(index, mut resource)| {
                    let n = index as u64 + 1;
                    if resource["id"].as_str().is_none_or(str::is_empty) {
                        resource["id"] = json!(derived_id(&file, n, &resource.to_string()));
                    }
                    (n, resource)
                })
                .collect();
            for chunk in lines.chunks(self.options.batch.max(1)) {
                let sent = self.send_lines(chunk).await?;
                self.apply(&file, sent)?;
            }
        }
        self.finish_file(file, size)
    }

    fn finish_file(&mut self, file: String, size: u64) -> Result<(), ImportError> {
        self.bar.inc(size);
        self.state.done.insert(file, FILE_DONE);
        self.save_state()
    }
}

/// Reads a response body as JSON (`Null` if it is not).
async fn json_value(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// Imports `input` (a file or a folder of `.ndjson` and `.json` files).
pub async fn import(
    input: &Path,
    target: &ImportTarget<'_>,
    options: &ImportOptions,
) -> Result<ImportSummary, ImportError> {
    let started = Instant::now();
    let files = input_files(input)?;
    let mut client = reqwest::Client::builder().timeout(Duration::from_secs(600));
    if let Some(ca) = target.ca {
        let pem = std::fs::read(ca).map_err(|e| ImportError::Input(format!("cannot read {}: {e}", ca.display())))?;
        let certificate =
            reqwest::Certificate::from_pem(&pem).map_err(|e| ImportError::Input(format!("{}: {e}", ca.display())))?;
        client = client.tls_certs_only([certificate]);
    }
    let client = client.build().map_err(|e| ImportError::Input(e.to_string()))?;
    let state_path = options.state.clone().unwrap_or_else(|| sibling(input, ".hearth-import.json"));
    let state: State = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            ImportError::Input(format!(
                "{} is not an import progress file ({e}); remove it to start over",
                state_path.display()
            ))
        })?,
        Err(_) => State::default(),
    };
    let report_path = options.report.clone().unwrap_or_else(|| sibling(input, ".hearth-import-errors.ndjson"));
    let report = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&report_path)
        .map_err(|e| ImportError::Input(format!("cannot write the error report {}: {e}", report_path.display())))?;
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("importing {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left) {msg}")
            .expect("valid template"),
    );
    let mut run = Run {
        target,
        client,
        options,
        state,
        state_path: state_path.clone(),
        report: std::io::BufWriter::new(report),
        summary: ImportSummary {
            files: files.len(),
            report: report_path,
            state: state_path,
            ..ImportSummary::default()
        },
        bar,
    };
    for file in &files {
        if run.summary.stopped {
            break;
        }
        if file.extension().is_some_and(|x| x == "ndjson") {
            run.import_ndjson(file).await?;
        } else {
            run.import_bundle(file).await?;
        }
    }
    run.bar.finish_and_clear();
    run.summary.seconds = started.elapsed().as_secs_f64();
    Ok(run.summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_valid_and_distinct() {
        let a = derived_id("a.ndjson", 1, "{}");
        assert_eq!(a, derived_id("a.ndjson", 1, "{}"));
        assert_ne!(a, derived_id("a.ndjson", 2, "{}"));
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn progress_files_sit_beside_the_input() {
        assert_eq!(sibling(Path::new("/x/data"), ".hearth-import.json"), Path::new("/x/data.hearth-import.json"));
        assert_eq!(sibling(Path::new("a.ndjson"), ".e"), Path::new("a.ndjson.e"));
    }
}
