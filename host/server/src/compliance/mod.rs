//! The compliance evidence pack: one document that tells an auditor what Hearth can prove about
//! itself at a moment — the audit chain verified up to an entry and its last signed checkpoint,
//! every stored version opened under its key, key versions and ages, erasures, who accessed
//! what in a period (refused logins, emergency accesses and their reviews included), the plugins
//! in force and how the server is configured — each with a pass, warn or fail finding mapped to
//! the HIPAA Security Rule (docs/compliance.md).
//!
//! [`gather`] collects the figures from the database (offline: no server needed), [`derive_findings`]
//! turns figures into findings by fixed rules, [`html::render`] draws the page, and [`pack`] writes
//! the files, signs them with the audit signing key and verifies a pack (signature, page,
//! findings and totals re-derived; with the database, the audit figures re-derived too).

use serde::{Deserialize, Serialize};

use crate::fhir::instant::{now_us, to_fhir_instant};
use crate::store::{Backend, Store, StoreError};

pub mod html;
pub mod pack;
mod review;

pub use review::{AccessReview, review_access};

/// The version of the evidence document's layout.
pub const FORMAT: &str = "hearth-evidence/1";

/// Microseconds in a day.
const DAY_US: i64 = 86_400_000_000;

/// Everything the pack states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub format: String,
    pub generated_at: String,
    pub generated_us: i64,
    pub hearth_version: String,
    /// `sqlite` or `postgresql`.
    pub database: String,
    pub period: Period,
    pub audit: AuditFigures,
    pub encryption: EncryptionFigures,
    pub access: AccessReview,
    pub plugins: Vec<PluginFigure>,
    pub configuration: ConfigurationFacts,
    /// Derived from everything above by [`derive_findings`].
    pub findings: Vec<Finding>,
}

/// The access review covers audit entries timed within `[since_us, until_us]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Period {
    pub since: String,
    pub until: String,
    pub since_us: i64,
    pub until_us: i64,
}

/// The access review's default length: the 90 days before its end.
pub const DEFAULT_PERIOD_DAYS: i64 = 90;

impl Period {
    /// The period `since`..`until`, each a date (`2026-12-01`, midnight UTC) or an instant;
    /// `until` defaults to now and `since` to [`DEFAULT_PERIOD_DAYS`] before it. The error says
    /// which bound is wrong and how to write it.
    pub fn parse(since: Option<&str>, until: Option<&str>) -> Result<Period, String> {
        let parse = |text: &str, name: &str| {
            let instant = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_owned() };
            crate::fhir::instant::parse_instant(&instant)
                .ok_or_else(|| format!("{name} {text}: give a date (2026-12-01) or an instant (2026-12-01T09:30:00Z)"))
        };
        let until_us = until.map(|u| parse(u, "until")).transpose()?.unwrap_or_else(now_us);
        let since_us = since.map(|s| parse(s, "since")).transpose()?.unwrap_or(until_us - DEFAULT_PERIOD_DAYS * DAY_US);
        if since_us > until_us {
            return Err("since is after until: the period runs from since to until".to_owned());
        }
        Ok(Period::new(since_us, until_us))
    }

    pub fn new(since_us: i64, until_us: i64) -> Period {
        Period { since: to_fhir_instant(since_us), until: to_fhir_instant(until_us), since_us, until_us }
    }

    pub fn contains(&self, at_us: i64) -> bool {
        (self.since_us..=self.until_us).contains(&at_us)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditFigures {
    /// Entries verified, from entry 1 on (all of them when `problem` is empty).
    pub entries_verified: i64,
    /// The last entry when the report was made, and its chain hash (hex): a later verification
    /// of the pack checks the database still holds this entry with this hash.
    pub head_seq: i64,
    pub head_hash: String,
    pub checkpoints: usize,
    pub last_checkpoint: Option<CheckpointFigure>,
    /// The key (id) checkpoints and this pack are signed with.
    pub signing_key_id: String,
    /// The first break found, if any.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointFigure {
    pub seq: i64,
    pub at: String,
    pub key_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncryptionFigures {
    /// Stored versions with a body (deletion markers have none).
    pub stored_versions: u64,
    /// Opened (decrypted and authenticated) under their data key.
    pub opened: u64,
    /// Sealed under a destroyed (crypto-shredded) key: unreadable by design.
    pub erased: u64,
    /// Did not open: altered, moved or sealed under a wrong key.
    pub failed: u64,
    /// The first failures (`Type/id/_history/version`), at most [`FAILED_EXAMPLES`].
    pub failed_examples: Vec<String>,
    pub kek_versions: Vec<KekFigure>,
    pub destroyed_data_keys: i64,
    pub oldest_live_data_key: Option<String>,
    pub oldest_live_data_key_age_days: Option<i64>,
    pub erasures_total: usize,
    /// Erasures within the period: when and the stated reason.
    pub erasures: Vec<ErasureFigure>,
}

/// Failures listed by name at most.
pub const FAILED_EXAMPLES: usize = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KekFigure {
    pub version: i64,
    pub created: String,
    pub age_days: i64,
    pub retired: Option<String>,
    pub live_data_keys: i64,
    pub sealed_versions: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErasureFigure {
    pub at: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginFigure {
    pub name: String,
    pub enabled: bool,
    /// The active version as its manifest names it, and its upload sequence number.
    pub version: String,
    pub seq: i64,
    pub world: String,
    pub sha256: String,
    /// The trust key that signed the active version, or `unsigned`.
    pub signer: String,
    pub uploaded: String,
    pub uploaded_by: String,
    /// Versions uploaded so far (rollback targets).
    pub versions: usize,
    pub bindings: Vec<BindingFigure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingFigure {
    /// Empty: every resource type.
    pub resource_types: Vec<String>,
    pub interactions: Vec<String>,
    pub mode: String,
    pub order: i64,
    /// Where the binding is written (`file.toml#N`).
    pub source: String,
}

/// How the server is configured, as the report was given it (the same file and flags as
/// `hearth serve`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigurationFacts {
    /// The configuration file read, if any.
    pub config_file: Option<String>,
    pub dev_mode: bool,
    /// `KEK from a keyring directory` or `KEK from HEARTH_KEKS`.
    pub key_source: String,
    pub tls: TlsFacts,
    pub max_token_lifetime_seconds: u64,
    pub console_idle_logoff_seconds: u64,
    /// Per identity provider: its issuer and whether Hearth checks MFA (`amr`/`acr`) on its tokens.
    pub issuers: Vec<IssuerFacts>,
    pub subscription_endpoints: Vec<String>,
    pub plugin_trust_keys: usize,
    /// Plugins the policy bindings name that are not loaded (what they gate is denied).
    pub bound_but_not_loaded: Vec<String>,
    pub refusals_per_address: u32,
    pub audit_checkpoint_every: i64,
    pub client_certificates: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsFacts {
    /// `dev` (generated, development only) or `files`.
    pub certificate: String,
    pub subject: Option<String>,
    pub not_after: Option<String>,
    pub days_left: Option<i64>,
    /// Why the certificate could not be read, if it could not.
    pub error: Option<String>,
    pub versions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuerFacts {
    pub issuer: String,
    pub require_amr: Vec<String>,
    pub require_acr: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    /// `audit`, `encryption`, `access`, `plugins` or `configuration`.
    pub area: String,
    /// The HIPAA Security Rule paragraph(s) it is evidence for.
    pub safeguard: String,
    pub status: Status,
    pub summary: String,
}

/// A refused-login count from one address at or above which the login-monitoring finding warns.
pub const REFUSALS_WORTH_A_LOOK: u64 = 100;
/// Key ages (days) beyond which rotation is due.
pub const KEK_MAX_AGE_DAYS: i64 = 365;

/// What [`gather`] needs besides the database.
pub struct Inputs<'a> {
    pub period: Period,
    pub configuration: ConfigurationFacts,
    /// The policy bindings in force, if the server is given a policies folder.
    pub bindings: Option<&'a crate::policy::BindingSet>,
    /// The audit signing key (its public half verifies checkpoints).
    pub signer: &'a crate::audit::AuditSigner,
}

/// Collects every figure and derives the findings. `progress(stage, done)` reports long stages
/// (`audit`, `versions`) as they go.
pub async fn gather(
    store: &Store,
    inputs: Inputs<'_>,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<Evidence, StoreError> {
    let now = now_us();
    let (head_seq, head_hash) = store.audit_head().await?;
    let chain = crate::audit::verify_chain(store, &[inputs.signer.public_key()], &|done| {
        progress("audit", u64::try_from(done).unwrap_or(0));
    })
    .await?;
    let checkpoints = store.audit_checkpoints().await?;
    let last_checkpoint = chain.last_good_checkpoint.and_then(|seq| {
        checkpoints.iter().rev().find(|c| c.seq == seq).map(|c| CheckpointFigure {
            seq,
            at: to_fhir_instant(c.at_us),
            key_id: c.key_id.clone(),
        })
    });
    let audit = AuditFigures {
        entries_verified: chain.entries,
        head_seq,
        head_hash: hex(&head_hash),
        checkpoints: chain.checkpoints,
        last_checkpoint,
        signing_key_id: inputs.signer.key_id().to_owned(),
        problem: chain.problem.map(|p| p.to_string()),
    };
    let access = review_access(store, &inputs.period, head_seq, &|done| progress("access", done)).await?;

    let (opened, erased, failed) = store.open_every_version(&|done| progress("versions", done)).await?;
    let inventory = store.encryption_inventory().await?;
    let age_days = |us: i64| (now - us).max(0) / DAY_US;
    let encryption = EncryptionFigures {
        stored_versions: opened + erased + failed.len() as u64,
        opened,
        erased,
        failed: failed.len() as u64,
        failed_examples: failed
            .iter()
            .take(FAILED_EXAMPLES)
            .map(|(t, id, v)| format!("{t}/{id}/_history/{v}"))
            .collect(),
        kek_versions: inventory
            .kek_versions
            .iter()
            .map(|k| KekFigure {
                version: k.version,
                created: to_fhir_instant(k.created_us),
                age_days: age_days(k.created_us),
                retired: k.retired_us.map(to_fhir_instant),
                live_data_keys: k.live_data_keys,
                sealed_versions: k.sealed_versions,
            })
            .collect(),
        destroyed_data_keys: inventory.destroyed_data_keys,
        oldest_live_data_key: inventory.oldest_live_data_key_us.map(to_fhir_instant),
        oldest_live_data_key_age_days: inventory.oldest_live_data_key_us.map(age_days),
        erasures_total: inventory.erasures.len(),
        erasures: inventory
            .erasures
            .iter()
            .filter(|(at, _)| inputs.period.contains(*at))
            .map(|(at, reason)| ErasureFigure { at: to_fhir_instant(*at), reason: reason.clone() })
            .collect(),
    };
    let plugins = plugin_inventory(store, inputs.bindings).await?;

    let mut evidence = Evidence {
        format: FORMAT.to_owned(),
        generated_at: to_fhir_instant(now),
        generated_us: now,
        hearth_version: env!("CARGO_PKG_VERSION").to_owned(),
        database: match store.backend() {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgresql",
        }
        .to_owned(),
        period: inputs.period,
        audit,
        encryption,
        access,
        plugins,
        configuration: inputs.configuration,
        findings: Vec::new(),
    };
    evidence.findings = derive_findings(&evidence);
    Ok(evidence)
}

/// Every plugin with its active version, signer and the bindings that name it.
async fn plugin_inventory(
    store: &Store,
    bindings: Option<&crate::policy::BindingSet>,
) -> Result<Vec<PluginFigure>, StoreError> {
    let mut figures = Vec::new();
    for plugin in store.plugins().await? {
        let versions = store.plugin_versions(&plugin.name).await?;
        let Some(active) = versions.iter().find(|v| v.seq == plugin.active_seq) else { continue };
        let bound = bindings.map(|set| set.bindings.iter().filter(|b| b.plugin == plugin.name).collect::<Vec<_>>());
        figures.push(PluginFigure {
            name: plugin.name.clone(),
            enabled: plugin.enabled,
            version: active.version.clone(),
            seq: active.seq,
            world: active.world.clone(),
            sha256: active.sha256.clone(),
            signer: active.signed_by.clone().unwrap_or_else(|| "unsigned".to_owned()),
            uploaded: to_fhir_instant(active.uploaded_us),
            uploaded_by: active.uploaded_by.clone(),
            versions: versions.len(),
            bindings: bound.unwrap_or_default().into_iter().map(binding_figure).collect(),
        });
    }
    Ok(figures)
}

pub fn binding_figure(binding: &crate::policy::Binding) -> BindingFigure {
    let mut resource_types: Vec<String> = binding.resource_types.iter().flatten().cloned().collect();
    resource_types.sort();
    let mut interactions: Vec<String> = binding.interactions.iter().map(|i| i.as_str().to_owned()).collect();
    interactions.sort();
    BindingFigure {
        resource_types,
        interactions,
        mode: binding.mode.as_str().to_owned(),
        order: binding.order,
        source: binding.source.clone(),
    }
}

/// The findings the figures support, by fixed rules (so `hearth compliance verify` re-derives
/// them and a pack whose findings were edited fails).
pub fn derive_findings(e: &Evidence) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut add = |id: &str, area: &str, safeguard: &str, status: Status, summary: String| {
        findings.push(Finding {
            id: id.to_owned(),
            area: area.to_owned(),
            safeguard: safeguard.to_owned(),
            status,
            summary,
        });
    };

    // Audit controls and integrity.
    let a = &e.audit;
    let (status, summary) = match (&a.problem, &a.last_checkpoint) {
        (Some(problem), _) => (
            Status::Fail,
            format!("the audit chain is broken: {problem}; entries 1 to {} verified", a.entries_verified),
        ),
        (None, None) if a.entries_verified > 0 => (
            Status::Warn,
            format!("entries verified: {}, but no signed checkpoint covers them yet", a.entries_verified),
        ),
        (None, _) if a.head_seq == 0 => (Status::Pass, "the audit log is empty".to_owned()),
        (None, last) => (
            Status::Pass,
            format!(
                "entries verified: {} (entry {} hashes to {}…); signed checkpoints: {}, the last at {}",
                a.entries_verified,
                a.head_seq,
                a.head_hash.get(..16).unwrap_or(&a.head_hash),
                a.checkpoints,
                last.as_ref().map_or("none".to_owned(), |c| format!("entry {} ({}, key {})", c.seq, c.at, c.key_id))
            ),
        ),
    };
    add("audit-chain", "audit", "164.312(b), 164.312(c)(1)", status, summary);

    // Encryption at rest and authentication of stored ePHI.
    let x = &e.encryption;
    let (status, summary) = if x.failed > 0 {
        (
            Status::Fail,
            format!(
                "{} of {} stored versions do not open under their key (altered or moved), e.g. {}",
                x.failed,
                x.stored_versions,
                x.failed_examples.join(", ")
            ),
        )
    } else {
        (
            Status::Pass,
            format!(
                "{} of {} stored versions open under their data key (AES-256-GCM, authenticated); the other {} are under destroyed keys (erased)",
                x.opened, x.stored_versions, x.erased
            ),
        )
    };
    add("encryption-coverage", "encryption", "164.312(a)(2)(iv), 164.312(c)(2)", status, summary);

    let newest = x.kek_versions.iter().max_by_key(|k| k.version);
    let lagging: Vec<i64> = x
        .kek_versions
        .iter()
        .filter(|k| Some(k.version) != newest.map(|n| n.version) && k.live_data_keys > 0)
        .map(|k| k.version)
        .collect();
    let (status, summary) = match newest {
        None => (Status::Pass, "no key-encryption key in use yet (empty database)".to_owned()),
        Some(n) if n.age_days > KEK_MAX_AGE_DAYS => {
            (Status::Warn, format!("KEK version {} is {} days old: rotate (hearth keys rotate)", n.version, n.age_days))
        }
        Some(_) if !lagging.is_empty() => (
            Status::Warn,
            format!("data keys are still wrapped by older KEK versions {lagging:?}: finish the rotation"),
        ),
        Some(n) => (
            Status::Pass,
            format!(
                "every live data key is wrapped by KEK version {} ({} days old); destroyed data keys: {}",
                n.version, n.age_days, x.destroyed_data_keys
            ),
        ),
    };
    add("key-rotation", "encryption", "164.312(a)(2)(iv)", status, summary);
    add(
        "erasures",
        "encryption",
        "164.310(d)(2)(i), 164.312(a)(2)(iv)",
        Status::Pass,
        format!(
            "erasures in the period: {} ({} in all), each recorded with its stated reason and its data key destroyed",
            x.erasures.len(),
            x.erasures_total
        ),
    );

    // Activity review, log-in monitoring, emergency access.
    let r = &e.access;
    add(
        "activity-review",
        "access",
        "164.308(a)(1)(ii)(D), 164.312(b)",
        Status::Pass,
        format!(
            "audit entries in the period: {}; principals: {}; administrative actions: {}; refused requests: {}",
            r.entries_in_period,
            r.principals.len(),
            r.admin_actions.len(),
            r.refused.iter().map(|f| f.count).sum::<u64>()
        ),
    );
    let loud: Vec<&str> =
        r.refused.iter().filter(|f| f.count >= REFUSALS_WORTH_A_LOOK).map(|f| f.address.as_str()).collect();
    let refused_logins: u64 = r.refused.iter().filter(|f| f.status == 401).map(|f| f.count).sum();
    add(
        "login-monitoring",
        "access",
        "164.308(a)(5)(ii)(C)",
        if loud.is_empty() { Status::Pass } else { Status::Warn },
        if loud.is_empty() {
            format!(
                "refused logins in the period: {refused_logins}; no address reached {REFUSALS_WORTH_A_LOOK} refusals"
            )
        } else {
            format!(
                "refused logins in the period: {refused_logins}; {REFUSALS_WORTH_A_LOOK} or more refusals from {}: look into them",
                loud.join(", ")
            )
        },
    );
    let b = &r.break_glass;
    add(
        "emergency-access-review",
        "access",
        "164.312(a)(2)(ii)",
        if b.pending > 0 { Status::Warn } else { Status::Pass },
        if b.pending > 0 {
            format!("{} of {} emergency accesses in the period await review", b.pending, b.accesses)
        } else if b.accesses == 0 {
            "no emergency access in the period".to_owned()
        } else {
            format!("emergency accesses in the period: {}, every one reviewed", b.accesses)
        },
    );

    // Plugins in force.
    let unsigned: Vec<&str> =
        e.plugins.iter().filter(|p| p.enabled && p.signer == "unsigned").map(|p| p.name.as_str()).collect();
    let missing = &e.configuration.bound_but_not_loaded;
    let (status, summary) = if !missing.is_empty() {
        (
            Status::Warn,
            format!(
                "policy bindings name plugins that are not loaded (what they gate is denied): {}",
                missing.join(", ")
            ),
        )
    } else if !unsigned.is_empty() {
        (Status::Warn, format!("enabled plugins run unsigned versions: {}", unsigned.join(", ")))
    } else {
        (
            Status::Pass,
            format!("plugins: {}; every enabled one runs a version signed by a trusted key", e.plugins.len()),
        )
    };
    add("plugin-integrity", "plugins", "164.312(c)(1), 164.308(a)(1)(ii)(D)", status, summary);

    configuration_findings(&e.configuration, &mut add);
    findings
}

fn configuration_findings(c: &ConfigurationFacts, add: &mut dyn FnMut(&str, &str, &str, Status, String)) {
    let area = "configuration";
    add(
        "production-mode",
        area,
        "164.312(a)(2)(iv)",
        if c.dev_mode { Status::Warn } else { Status::Pass },
        if c.dev_mode {
            "development mode: keys and the TLS certificate are generated into the data directory; not for patient data"
                .to_owned()
        } else {
            format!("production mode; {}", c.key_source)
        },
    );
    let t = &c.tls;
    let (status, summary) = match (&t.error, t.certificate.as_str(), t.days_left) {
        (Some(error), _, _) => (Status::Fail, format!("the TLS certificate cannot be read: {error}")),
        (None, "dev", _) => (Status::Warn, "the generated development certificate is in use".to_owned()),
        (None, _, Some(days)) if days < 0 => (Status::Fail, format!("the TLS certificate expired {} days ago", -days)),
        (None, _, Some(days)) if days < 30 => (Status::Warn, format!("the TLS certificate expires in {days} days")),
        (None, _, days) => (
            Status::Pass,
            format!(
                "certificate for {} valid until {} ({} days)",
                t.subject.as_deref().unwrap_or("?"),
                t.not_after.as_deref().unwrap_or("?"),
                days.unwrap_or(0)
            ),
        ),
    };
    add("tls-certificate", area, "164.312(e)(1), 164.312(e)(2)(ii)", status, summary);
    add(
        "tls-versions",
        area,
        "164.312(e)(1), 164.312(e)(2)(i)",
        Status::Pass,
        format!("HTTPS only, {}; no plaintext listener", t.versions.join(" and ")),
    );
    add(
        "token-lifetime",
        area,
        "164.312(d), 164.312(a)(2)(iii)",
        if c.max_token_lifetime_seconds <= 3600 { Status::Pass } else { Status::Warn },
        format!("bearer tokens live at most {} s (recommended: 3600 or less)", c.max_token_lifetime_seconds),
    );
    add(
        "idle-logoff",
        area,
        "164.312(a)(2)(iii)",
        if c.console_idle_logoff_seconds <= 900 { Status::Pass } else { Status::Warn },
        format!("console sessions end after {} s idle (recommended: 900 or less)", c.console_idle_logoff_seconds),
    );
    let without_mfa: Vec<&str> = c
        .issuers
        .iter()
        .filter(|i| i.require_amr.is_empty() && i.require_acr.is_empty())
        .map(|i| i.issuer.as_str())
        .collect();
    let (status, summary) = if c.issuers.is_empty() {
        (
            Status::Warn,
            "no identity provider is configured: only locally signed development tokens are accepted".to_owned(),
        )
    } else if !without_mfa.is_empty() {
        (
            Status::Warn,
            format!(
                "tokens of {} are accepted without an MFA claim check (set require_amr or require_acr)",
                without_mfa.join(", ")
            ),
        )
    } else {
        (
            Status::Pass,
            format!("every identity provider's tokens must show MFA (amr/acr): {} providers", c.issuers.len()),
        )
    };
    add("multi-factor", area, "164.312(d)", status, summary);
    let plain: Vec<&str> =
        c.subscription_endpoints.iter().filter(|e| !e.starts_with("https://")).map(String::as_str).collect();
    add(
        "subscription-allowlist",
        area,
        "164.312(e)(1)",
        if plain.is_empty() { Status::Pass } else { Status::Warn },
        if c.subscription_endpoints.is_empty() {
            "no notification endpoint is allowed: Subscriptions send nothing out".to_owned()
        } else if plain.is_empty() {
            format!("notifications go only to {} allowlisted HTTPS endpoints", c.subscription_endpoints.len())
        } else {
            format!("allowlisted endpoints without TLS: {}", plain.join(", "))
        },
    );
    add(
        "plugin-trust",
        area,
        "164.312(c)(1)",
        if c.plugin_trust_keys > 0 { Status::Pass } else { Status::Warn },
        if c.plugin_trust_keys > 0 {
            format!("plugins must be signed by one of {} trusted keys", c.plugin_trust_keys)
        } else {
            "no plugin trust key is configured: unsigned plugins can be loaded".to_owned()
        },
    );
    add(
        "refusal-limit",
        area,
        "164.308(a)(5)(ii)(C)",
        if c.refusals_per_address > 0 { Status::Pass } else { Status::Warn },
        if c.refusals_per_address > 0 {
            format!(
                "each address may cause {} refused requests a second before it is answered 429",
                c.refusals_per_address
            )
        } else {
            "refused requests are not limited per address".to_owned()
        },
    );
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The configuration facts of `settings` (as `hearth serve` would run with them), with the
/// bindings in force and the plugins loaded.
pub fn configuration_facts(
    settings: &crate::config::ServeSettings,
    bindings: Option<&crate::policy::BindingSet>,
    loaded: &[String],
) -> ConfigurationFacts {
    use crate::config::{KeySource, TlsSource};
    let (certificate, cert_path) = match &settings.tls {
        TlsSource::Files { cert, .. } => ("files", cert.clone()),
        TlsSource::DevGenerated => {
            ("dev", crate::tls::dev_ca::DevTlsFiles::in_dir(&settings.storage.data_dir).server_cert)
        }
    };
    let summary = crate::tls::certificate_summary(&cert_path);
    let now_secs = now_us() / 1_000_000;
    let (subject, not_after, days_left, error) = match summary {
        Ok((subject, expires)) => (
            Some(subject),
            Some(to_fhir_instant(expires.saturating_mul(1_000_000))),
            Some((expires - now_secs).div_euclid(86_400)),
            None,
        ),
        // The development certificate is made on the server's first start.
        Err(_) if certificate == "dev" && !cert_path.exists() => (None, None, None, None),
        Err(error) => (None, None, None, Some(error.to_string())),
    };
    let mut missing: Vec<String> = bindings
        .map(|set| set.bindings.iter().map(|b| b.plugin.clone()).filter(|p| !loaded.contains(p)).collect())
        .unwrap_or_default();
    missing.sort();
    missing.dedup();
    ConfigurationFacts {
        config_file: settings.config_file.as_ref().map(|p| p.display().to_string()),
        dev_mode: settings.storage.dev,
        key_source: match &settings.storage.keys {
            KeySource::Directory(dir) => format!("KEKs from the keyring directory {}", dir.display()),
            KeySource::Environment => "KEKs from HEARTH_KEKS".to_owned(),
        },
        tls: TlsFacts {
            certificate: certificate.to_owned(),
            subject,
            not_after,
            days_left,
            error,
            versions: vec!["TLS 1.3".to_owned(), "TLS 1.2".to_owned()],
        },
        max_token_lifetime_seconds: settings.max_token_lifetime.as_secs(),
        console_idle_logoff_seconds: settings.console_idle.as_secs(),
        issuers: settings
            .issuers
            .iter()
            .map(|i| IssuerFacts {
                issuer: i.iss.clone(),
                require_amr: i.require_amr.clone(),
                require_acr: i.require_acr.clone(),
            })
            .collect(),
        subscription_endpoints: settings.subscription_endpoints.clone(),
        plugin_trust_keys: settings.plugin_trust_keys.len(),
        bound_but_not_loaded: missing,
        refusals_per_address: settings.refusals_per_address,
        audit_checkpoint_every: settings.audit_checkpoint_every,
        client_certificates: settings.client_ca.is_some(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the policy bindings: {0}")]
    Bindings(#[from] crate::policy::BindingError),
}

/// The evidence for a server running with `settings` (its policies folder read as `hearth
/// serve` reads it), over `period`.
pub async fn evidence_for(
    store: &Store,
    settings: &crate::config::ServeSettings,
    period: Period,
    signer: &crate::audit::AuditSigner,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<Evidence, ReportError> {
    let bindings = settings.policies.as_deref().map(crate::policy::BindingSet::load_dir).transpose()?;
    let loaded: Vec<String> = store.plugins().await?.into_iter().filter(|p| p.enabled).map(|p| p.name).collect();
    let configuration = configuration_facts(settings, bindings.as_ref(), &loaded);
    Ok(gather(store, Inputs { period, configuration, bindings: bindings.as_ref(), signer }, progress).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clean, empty deployment in production mode with every control configured.
    fn clean() -> Evidence {
        let mut evidence = Evidence {
            format: FORMAT.to_owned(),
            generated_at: to_fhir_instant(0),
            generated_us: 0,
            hearth_version: "test".to_owned(),
            database: "sqlite".to_owned(),
            period: Period::new(0, 1),
            audit: AuditFigures {
                entries_verified: 10,
                head_seq: 10,
                head_hash: "ab".repeat(32),
                checkpoints: 1,
                last_checkpoint: Some(CheckpointFigure { seq: 10, at: to_fhir_instant(0), key_id: "k".to_owned() }),
                signing_key_id: "k".to_owned(),
                problem: None,
            },
            encryption: EncryptionFigures {
                stored_versions: 3,
                opened: 3,
                erased: 0,
                failed: 0,
                failed_examples: Vec::new(),
                kek_versions: vec![KekFigure {
                    version: 1,
                    created: to_fhir_instant(0),
                    age_days: 10,
                    retired: None,
                    live_data_keys: 2,
                    sealed_versions: 3,
                }],
                destroyed_data_keys: 0,
                oldest_live_data_key: None,
                oldest_live_data_key_age_days: None,
                erasures_total: 0,
                erasures: Vec::new(),
            },
            access: AccessReview { scanned_to_seq: 10, ..AccessReview::default() },
            plugins: Vec::new(),
            configuration: ConfigurationFacts {
                config_file: None,
                dev_mode: false,
                key_source: "KEKs from HEARTH_KEKS".to_owned(),
                tls: TlsFacts {
                    certificate: "files".to_owned(),
                    subject: Some("CN=fhir.example.org".to_owned()),
                    not_after: None,
                    days_left: Some(200),
                    error: None,
                    versions: vec!["TLS 1.3".to_owned()],
                },
                max_token_lifetime_seconds: 3600,
                console_idle_logoff_seconds: 900,
                issuers: vec![IssuerFacts {
                    issuer: "https://idp".to_owned(),
                    require_amr: vec!["mfa".to_owned()],
                    require_acr: Vec::new(),
                }],
                subscription_endpoints: vec!["https://hooks.example.org/".to_owned()],
                plugin_trust_keys: 1,
                bound_but_not_loaded: Vec::new(),
                refusals_per_address: 20,
                audit_checkpoint_every: 1000,
                client_certificates: false,
            },
            findings: Vec::new(),
        };
        evidence.findings = derive_findings(&evidence);
        evidence
    }

    fn status_of(evidence: &Evidence, id: &str) -> Status {
        derive_findings(evidence).into_iter().find(|f| f.id == id).unwrap_or_else(|| panic!("no {id}")).status
    }

    #[test]
    fn a_clean_deployment_passes_everything() {
        let evidence = clean();
        let not_passing: Vec<&Finding> = evidence.findings.iter().filter(|f| f.status != Status::Pass).collect();
        assert!(not_passing.is_empty(), "{not_passing:?}");
    }

    /// A finding's id, the status it should take, and the change of figures that should cause it.
    type Case = (&'static str, Status, Box<dyn Fn(&mut Evidence)>);

    #[test]
    fn each_rule_turns_on_its_own_figure() {
        let cases: Vec<Case> = vec![
            ("audit-chain", Status::Fail, Box::new(|e| e.audit.problem = Some("entry 3 was altered".into()))),
            ("audit-chain", Status::Warn, Box::new(|e| e.audit.last_checkpoint = None)),
            (
                "encryption-coverage",
                Status::Fail,
                Box::new(|e| {
                    e.encryption.failed = 1;
                    e.encryption.failed_examples = vec!["Patient/a/_history/1".into()];
                }),
            ),
            ("key-rotation", Status::Warn, Box::new(|e| e.encryption.kek_versions[0].age_days = 400)),
            (
                "key-rotation",
                Status::Warn,
                Box::new(|e| {
                    let mut newer = e.encryption.kek_versions[0].clone();
                    newer.version = 2;
                    e.encryption.kek_versions.push(newer);
                }),
            ),
            (
                "login-monitoring",
                Status::Warn,
                Box::new(|e| {
                    e.access.refused.push(review::RefusedFigure {
                        address: "203.0.113.9".into(),
                        status: 401,
                        count: REFUSALS_WORTH_A_LOOK,
                        first: String::new(),
                        last: String::new(),
                    })
                }),
            ),
            (
                "emergency-access-review",
                Status::Warn,
                Box::new(|e| {
                    e.access.break_glass.accesses = 1;
                    e.access.break_glass.pending = 1;
                }),
            ),
            (
                "plugin-integrity",
                Status::Warn,
                Box::new(|e| e.configuration.bound_but_not_loaded = vec!["consent".into()]),
            ),
            ("production-mode", Status::Warn, Box::new(|e| e.configuration.dev_mode = true)),
            ("tls-certificate", Status::Fail, Box::new(|e| e.configuration.tls.days_left = Some(-1))),
            ("tls-certificate", Status::Warn, Box::new(|e| e.configuration.tls.days_left = Some(10))),
            ("tls-certificate", Status::Warn, Box::new(|e| e.configuration.tls.certificate = "dev".into())),
            ("token-lifetime", Status::Warn, Box::new(|e| e.configuration.max_token_lifetime_seconds = 86_400)),
            ("idle-logoff", Status::Warn, Box::new(|e| e.configuration.console_idle_logoff_seconds = 3600)),
            ("multi-factor", Status::Warn, Box::new(|e| e.configuration.issuers[0].require_amr.clear())),
            ("multi-factor", Status::Warn, Box::new(|e| e.configuration.issuers.clear())),
            (
                "subscription-allowlist",
                Status::Warn,
                Box::new(|e| e.configuration.subscription_endpoints.push("http://plain.example.org/".into())),
            ),
            ("plugin-trust", Status::Warn, Box::new(|e| e.configuration.plugin_trust_keys = 0)),
            ("refusal-limit", Status::Warn, Box::new(|e| e.configuration.refusals_per_address = 0)),
        ];
        for (id, expected, change) in cases {
            let mut evidence = clean();
            change(&mut evidence);
            assert_eq!(status_of(&evidence, id), expected, "{id}");
            // Only that finding moved.
            let moved: Vec<String> = derive_findings(&evidence)
                .into_iter()
                .zip(&clean().findings)
                .filter(|(now, before)| now.status != before.status)
                .map(|(now, _)| now.id)
                .collect();
            assert_eq!(moved, vec![id.to_owned()], "changing {id}'s figure moved {moved:?}");
        }
    }

    #[test]
    fn a_pack_verifies_only_against_the_key_that_signed_it() {
        let dir = tempfile::tempdir().unwrap();
        let signer = crate::audit::AuditSigner::load(&dir.path().join("a.p8"), true).unwrap();
        let other = crate::audit::AuditSigner::load(&dir.path().join("b.p8"), true).unwrap();
        let evidence = clean();
        pack::PackFiles::sign(&evidence, &signer).write_to(&dir.path().join("pack")).unwrap();
        assert!(pack::verify_pack(&dir.path().join("pack"), &signer.public_key()).passed());
        let wrong = pack::verify_pack(&dir.path().join("pack"), &other.public_key());
        assert!(!wrong.passed());
        assert!(wrong.checks.iter().any(|c| !c.ok && c.detail.contains("not by the trusted audit key")));
        // Re-signed by another key after an edit: the figures are consistent, the key is not.
        let mut edited = evidence.clone();
        edited.access.break_glass.pending = 0;
        pack::PackFiles::sign(&edited, &other).write_to(&dir.path().join("forged")).unwrap();
        assert!(!pack::verify_pack(&dir.path().join("forged"), &signer.public_key()).passed());
        // An edited finding, page redrawn and signed: the findings no longer follow from the figures.
        let mut lied = evidence;
        lied.findings[0].status = Status::Pass;
        lied.audit.problem = Some("entry 2 was altered".into());
        pack::PackFiles::sign(&lied, &signer).write_to(&dir.path().join("lied")).unwrap();
        let verdict = pack::verify_pack(&dir.path().join("lied"), &signer.public_key());
        assert!(verdict.checks.iter().any(|c| !c.ok && c.what == "findings follow from the figures"));
    }
}
