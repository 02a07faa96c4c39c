//! The access review: one pass over the audit chain up to a given entry, summarising the
//! entries timed within the period — who accessed (with which scopes and clients), the
//! administrative actions, refused requests by address, and emergency accesses with their
//! reviews. The same pass over the same entries gives the same figures, which is how
//! `hearth compliance verify` re-derives them from the database.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::Period;
use crate::audit::{AuditEvent, Outcome};
use crate::fhir::instant::parse_instant;
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccessReview {
    /// The review read entries 1 to this one.
    pub scanned_to_seq: i64,
    pub entries_in_period: u64,
    /// Everyone who made an authenticated request, by subject.
    pub principals: Vec<PrincipalFigure>,
    /// Administrative changes (admin API and command line), not admin reads.
    pub admin_actions: Vec<AdminAction>,
    /// Refused requests (401 not authenticated, 403 not allowed, 429 over the refusal limit)
    /// by client address.
    pub refused: Vec<RefusedFigure>,
    pub break_glass: BreakGlassFigures,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrincipalFigure {
    pub subject: String,
    pub issuers: Vec<String>,
    pub clients: Vec<String>,
    /// Every scope set the principal's tokens carried.
    pub scopes: Vec<String>,
    pub requests: u64,
    pub denied: u64,
    /// Distinct patients whose records the principal read or wrote.
    pub patients: u64,
    pub first: String,
    pub last: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminAction {
    pub seq: i64,
    pub at: String,
    pub subject: Option<String>,
    pub action: String,
    pub status: u16,
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefusedFigure {
    pub address: String,
    pub status: u16,
    pub count: u64,
    pub first: String,
    pub last: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BreakGlassFigures {
    pub accesses: u64,
    pub reviewed: u64,
    pub pending: u64,
    pub entries: Vec<BreakGlassEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakGlassEntry {
    pub seq: i64,
    pub at: String,
    pub subject: Option<String>,
    pub action: String,
    pub resource: Option<String>,
    pub status: u16,
    pub reason: String,
    pub reviews: Vec<ReviewFigure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewFigure {
    pub seq: i64,
    pub at: String,
    pub reviewer: Option<String>,
    pub decision: String,
}

/// Entries read per query.
const PAGE: i64 = 2000;

/// Reads entries 1 to `to_seq` and summarises those within `period`; `progress(done)` after
/// each page.
pub async fn review_access(
    store: &Store,
    period: &Period,
    to_seq: i64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<AccessReview, StoreError> {
    let mut tally = Tally::default();
    let mut after = 0;
    while after < to_seq {
        let page = store.audit_entries(after, PAGE.min(to_seq - after)).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for stored in page.iter().filter(|s| s.seq <= to_seq) {
            // An entry that does not parse is the chain finding's business (it hashes what is
            // stored); the review counts what it can read.
            if let Ok(event) = serde_json::from_str::<AuditEvent>(&stored.entry) {
                tally.add(stored.seq, &event, period);
            }
        }
        progress(u64::try_from(after).unwrap_or(0));
    }
    Ok(tally.finish(to_seq))
}

#[derive(Default)]
struct Tally {
    entries: u64,
    principals: BTreeMap<String, (PrincipalFigure, BTreeSet<String>)>,
    admin: Vec<AdminAction>,
    refused: BTreeMap<(String, u16), RefusedFigure>,
    break_glass: Vec<BreakGlassEntry>,
    /// Reviews by the entry they review (from anywhere in the chain: a review may come after
    /// the period).
    reviews: HashMap<i64, Vec<ReviewFigure>>,
}

impl Tally {
    fn add(&mut self, seq: i64, event: &AuditEvent, period: &Period) {
        if let (Some(review), Outcome::Success) = (&event.review, event.outcome)
            && let Some(reviewed) = event.resource_id.as_deref().and_then(|id| id.parse::<i64>().ok())
        {
            self.reviews.entry(reviewed).or_default().push(ReviewFigure {
                seq,
                at: event.at.clone(),
                reviewer: event.subject.clone(),
                decision: review.decision.clone(),
            });
        }
        if !parse_instant(&event.at).is_some_and(|at| period.contains(at)) {
            return;
        }
        self.entries += 1;
        let target = match (&event.resource_type, &event.resource_id) {
            (Some(t), Some(id)) => Some(format!("{t}/{id}")),
            (Some(t), None) => Some(t.clone()),
            _ => None,
        };
        if matches!(event.status, 401 | 403 | 429) {
            let address = event.ip.clone().unwrap_or_else(|| "unknown".to_owned());
            let count = event.count.unwrap_or(1);
            self.refused
                .entry((address.clone(), event.status))
                .and_modify(|f| {
                    f.count += count;
                    f.last.clone_from(&event.at);
                })
                .or_insert_with(|| RefusedFigure {
                    address,
                    status: event.status,
                    count,
                    first: event.at.clone(),
                    last: event.at.clone(),
                });
        }
        if let Some(subject) = &event.subject {
            let (figure, patients) = self.principals.entry(subject.clone()).or_insert_with(|| {
                (
                    PrincipalFigure { subject: subject.clone(), first: event.at.clone(), ..PrincipalFigure::default() },
                    BTreeSet::new(),
                )
            });
            figure.requests += 1;
            if event.outcome == Outcome::Denied {
                figure.denied += 1;
            }
            figure.last.clone_from(&event.at);
            for (list, value) in [
                (&mut figure.issuers, &event.issuer),
                (&mut figure.clients, &event.client_id),
                (&mut figure.scopes, &event.scopes),
            ] {
                if let Some(value) = value.as_ref().filter(|v| !list.contains(v)) {
                    list.push(value.clone());
                }
            }
            patients.extend(event.patients.iter().cloned());
        }
        let from_command_line = event.subject.as_deref().is_some_and(|s| s.starts_with("cli:"));
        if (event.action.starts_with("admin-") && !event.action.starts_with("admin-read-")) || from_command_line {
            self.admin.push(AdminAction {
                seq,
                at: event.at.clone(),
                subject: event.subject.clone(),
                action: event.action.clone(),
                status: event.status,
                target: target.clone(),
            });
        }
        if let Some(reason) = &event.break_glass {
            self.break_glass.push(BreakGlassEntry {
                seq,
                at: event.at.clone(),
                subject: event.subject.clone(),
                action: event.action.clone(),
                resource: target,
                status: event.status,
                reason: reason.clone(),
                reviews: Vec::new(),
            });
        }
    }

    fn finish(mut self, to_seq: i64) -> AccessReview {
        for entry in &mut self.break_glass {
            entry.reviews = self.reviews.remove(&entry.seq).unwrap_or_default();
        }
        let reviewed = self.break_glass.iter().filter(|e| !e.reviews.is_empty()).count() as u64;
        AccessReview {
            scanned_to_seq: to_seq,
            entries_in_period: self.entries,
            principals: self
                .principals
                .into_values()
                .map(|(mut figure, patients)| {
                    figure.patients = patients.len() as u64;
                    figure
                })
                .collect(),
            admin_actions: self.admin,
            refused: self.refused.into_values().collect(),
            break_glass: BreakGlassFigures {
                accesses: self.break_glass.len() as u64,
                reviewed,
                pending: self.break_glass.len() as u64 - reviewed,
                entries: self.break_glass,
            },
        }
    }
}
