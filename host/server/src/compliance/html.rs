//! The evidence as a readable page: a self-contained HTML document (no scripts, no external
//! files), drawn only from the [`Evidence`] so that verification can draw it again and compare.

use std::fmt::Write as _;

use super::{Evidence, Finding, Status};
use crate::api::console::html::{esc, table};

/// The whole page.
pub fn render(e: &Evidence) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Hearth compliance evidence, {at}</title><style>{STYLE}</style></head><body><main>\
         <h1>Hearth compliance evidence</h1>{body}</main></body></html>\n",
        at = esc(&e.generated_at),
        body = body(e)
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1b1b1b;line-height:1.4}\
table{border-collapse:collapse;margin:0 0 1.5rem;width:100%}caption{text-align:left;font-weight:600;padding:.3rem 0}\
th,td{border:1px solid #bbb;padding:.3rem .5rem;text-align:left;vertical-align:top}code{font-size:.9em}\
.pass{color:#0b6b0b;font-weight:600}.warn{color:#8a5300;font-weight:600}.fail{color:#b00020;font-weight:600}";

/// The status as a word a screen reader reads and a colour a reader sees.
pub fn status(status: Status) -> String {
    format!("<span class=\"{0}\">{0}</span>", status.as_str())
}

fn findings_table(caption: &str, findings: &[&Finding]) -> String {
    let rows: Vec<Vec<String>> =
        findings.iter().map(|f| vec![status(f.status), esc(&f.id), esc(&f.safeguard), esc(&f.summary)]).collect();
    table(caption, &["Status", "Finding", "45 CFR", "What the evidence shows"], &rows)
}

fn code(text: &str) -> String {
    format!("<code>{}</code>", esc(text))
}

/// The page's content, also shown inside the console's Evidence page.
pub fn body(e: &Evidence) -> String {
    let mut html = String::new();
    let count = |s: Status| e.findings.iter().filter(|f| f.status == s).count();
    let _ = write!(
        html,
        "<p>Generated {} by Hearth {} from the {} database. Access review period: {} to {}. \
         {} pass, {} warn, {} fail. Signed with the audit signing key <code>{}</code>; check with \
         <code>hearth compliance verify</code>.</p>",
        esc(&e.generated_at),
        esc(&e.hearth_version),
        esc(&e.database),
        esc(&e.period.since),
        esc(&e.period.until),
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail),
        esc(&e.audit.signing_key_id)
    );
    let evidence: Vec<&Finding> = e.findings.iter().filter(|f| f.area != "configuration").collect();
    let configuration: Vec<&Finding> = e.findings.iter().filter(|f| f.area == "configuration").collect();
    html.push_str(&findings_table("Findings", &evidence));
    html.push_str(&findings_table("Configuration", &configuration));

    let a = &e.audit;
    html.push_str(&table(
        "Audit chain",
        &["Entries verified", "Last entry", "Its hash", "Signed checkpoints", "Last checkpoint", "Problem"],
        &[vec![
            a.entries_verified.to_string(),
            a.head_seq.to_string(),
            code(&a.head_hash),
            a.checkpoints.to_string(),
            a.last_checkpoint
                .as_ref()
                .map_or("none".to_owned(), |c| format!("entry {} at {} (key {})", c.seq, esc(&c.at), code(&c.key_id))),
            a.problem.as_deref().map_or("none".to_owned(), esc),
        ]],
    ));

    let x = &e.encryption;
    html.push_str(&table(
        "Stored versions",
        &["Stored", "Opened under their key", "Under destroyed keys", "Failed", "First failures"],
        &[vec![
            x.stored_versions.to_string(),
            x.opened.to_string(),
            x.erased.to_string(),
            x.failed.to_string(),
            x.failed_examples.iter().map(|f| code(f)).collect::<Vec<_>>().join(" "),
        ]],
    ));
    let keks: Vec<Vec<String>> = x
        .kek_versions
        .iter()
        .map(|k| {
            vec![
                k.version.to_string(),
                esc(&k.created),
                k.age_days.to_string(),
                k.retired.as_deref().map_or("in use".to_owned(), esc),
                k.live_data_keys.to_string(),
                k.sealed_versions.to_string(),
            ]
        })
        .collect();
    html.push_str(&table(
        "Key-encryption keys",
        &["Version", "Created", "Age (days)", "Retired", "Live data keys", "Versions sealed"],
        &keks,
    ));
    let _ = write!(
        html,
        "<p>Destroyed data keys: {}. Oldest live data key: {} ({} days).</p>",
        x.destroyed_data_keys,
        x.oldest_live_data_key.as_deref().map_or("none".to_owned(), esc),
        x.oldest_live_data_key_age_days.map_or("-".to_owned(), |d| d.to_string())
    );
    let erasures: Vec<Vec<String>> = x.erasures.iter().map(|r| vec![esc(&r.at), esc(&r.reason)]).collect();
    html.push_str(&table(
        &format!("Erasures in the period ({} in all)", x.erasures_total),
        &["When", "Stated reason"],
        &erasures,
    ));

    let r = &e.access;
    let principals: Vec<Vec<String>> = r
        .principals
        .iter()
        .map(|p| {
            vec![
                code(&p.subject),
                p.issuers.iter().map(|i| code(i)).collect::<Vec<_>>().join(" "),
                p.clients.iter().map(|c| code(c)).collect::<Vec<_>>().join(" "),
                p.scopes.iter().map(|s| code(s)).collect::<Vec<_>>().join("<br>"),
                p.requests.to_string(),
                p.denied.to_string(),
                p.patients.to_string(),
                format!("{} – {}", esc(&p.first), esc(&p.last)),
            ]
        })
        .collect();
    html.push_str(&table(
        &format!("Access review: {} audit entries in the period", r.entries_in_period),
        &["Principal", "Issuers", "Clients", "Scopes", "Requests", "Denied", "Patients", "First – last"],
        &principals,
    ));
    let refused: Vec<Vec<String>> = r
        .refused
        .iter()
        .map(|f| {
            vec![
                code(&f.address),
                f.status.to_string(),
                f.count.to_string(),
                format!("{} – {}", esc(&f.first), esc(&f.last)),
            ]
        })
        .collect();
    html.push_str(&table("Refused requests by address", &["Address", "Status", "Count", "First – last"], &refused));
    let admin: Vec<Vec<String>> = r
        .admin_actions
        .iter()
        .map(|a| {
            vec![
                a.seq.to_string(),
                esc(&a.at),
                a.subject.as_deref().map_or(String::new(), code),
                code(&a.action),
                a.target.as_deref().map_or(String::new(), code),
                a.status.to_string(),
            ]
        })
        .collect();
    html.push_str(&table("Administrative actions", &["Entry", "When", "Who", "Action", "Target", "Status"], &admin));
    let b = &r.break_glass;
    let glass: Vec<Vec<String>> = b
        .entries
        .iter()
        .map(|g| {
            let reviews: Vec<String> = g
                .reviews
                .iter()
                .map(|v| {
                    format!(
                        "{} by {} at {} (entry {})",
                        esc(&v.decision),
                        v.reviewer.as_deref().map_or("?".to_owned(), esc),
                        esc(&v.at),
                        v.seq
                    )
                })
                .collect();
            vec![
                g.seq.to_string(),
                esc(&g.at),
                g.subject.as_deref().map_or(String::new(), code),
                code(&g.action),
                g.resource.as_deref().map_or(String::new(), code),
                g.status.to_string(),
                esc(&g.reason),
                if reviews.is_empty() { status(Status::Warn) + " pending" } else { reviews.join("<br>") },
            ]
        })
        .collect();
    html.push_str(&table(
        &format!("Emergency accesses: {} ({} reviewed, {} pending)", b.accesses, b.reviewed, b.pending),
        &["Entry", "When", "Who", "Action", "Resource", "Status", "Stated reason", "Reviews"],
        &glass,
    ));

    let plugins: Vec<Vec<String>> = e
        .plugins
        .iter()
        .map(|p| {
            let bindings: Vec<String> = p
                .bindings
                .iter()
                .map(|b| {
                    format!(
                        "{} on {} ({}, order {}, {})",
                        esc(&b.interactions.join(", ")),
                        if b.resource_types.is_empty() {
                            "every type".to_owned()
                        } else {
                            esc(&b.resource_types.join(", "))
                        },
                        esc(&b.mode),
                        b.order,
                        code(&b.source)
                    )
                })
                .collect();
            vec![
                code(&p.name),
                format!("{} (upload {}, {} kept)", esc(&p.version), p.seq, p.versions),
                esc(&p.world),
                if p.enabled { "yes".to_owned() } else { "no".to_owned() },
                code(&p.signer),
                code(p.sha256.get(..16).unwrap_or(&p.sha256)),
                format!("{} by {}", esc(&p.uploaded), esc(&p.uploaded_by)),
                if bindings.is_empty() { "none".to_owned() } else { bindings.join("<br>") },
            ]
        })
        .collect();
    html.push_str(&table(
        "Plugins",
        &["Plugin", "Active version", "World", "Enabled", "Signer", "SHA-256", "Uploaded", "Bindings"],
        &plugins,
    ));
    html
}
