//! The access predicate in search terms: for each resource type, which resources a request may
//! see, as a patient compartment and search filters. The store compiles it into the SQL of
//! every query a request causes (the main search, each chain hop and `_has`, includes, counts,
//! history), and [`Reach::admits`] evaluates the same predicate on a resource in memory (writes,
//! versions) with the same semantics, over the same index rows.
//!
//! A [`Reach`] says nothing about *why* (which scope, which patient): building it from a
//! principal is `crate::auth`'s business; using it is the store's.

use super::extract::IndexEntry;
use super::query::{Condition, Filter, TokenMatch};
use super::registry::Param;
use crate::record::VersionRecord;
use hearth_crypto::blind_index::BlindIndexKey;

/// What one request may see of one resource type.
#[derive(Debug, Clone, PartialEq)]
pub enum Reach {
    /// Nothing of the type.
    Nothing,
    /// Every resource of the type.
    All,
    /// The resources any of these grants admits.
    Grants(Vec<Grant>),
}

/// One way of being within reach: in a compartment (if given) and matching every filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// Only resources sealed under this data key: a patient's compartment, `patient/<id>`.
    pub compartment: Option<String>,
    /// Search filters that must all hold (SMART v2 `?param=value` constraints). Only token
    /// and reference conditions on indexed parameters, which both the SQL and [`Reach::admits`]
    /// evaluate over the same index rows.
    pub filters: Vec<Filter>,
}

/// Where the reach of each type comes from (a principal's scopes for one permission).
pub trait Visibility: Sync {
    fn reach(&self, res_type: &str) -> Reach;
}

/// Everything is visible: the server's own work (rebuilds, deliveries), never a request.
pub struct Unrestricted;

impl Visibility for Unrestricted {
    fn reach(&self, _res_type: &str) -> Reach {
        Reach::All
    }
}

impl Reach {
    pub fn is_all(&self) -> bool {
        matches!(self, Reach::All)
    }

    pub fn is_nothing(&self) -> bool {
        matches!(self, Reach::Nothing)
    }

    /// Whether the resource `id`, sealed under `key_id` (`None`: a deletion, which has no
    /// compartment) and indexed as `entries`, is within reach. `entries` needs to hold the rows
    /// of [`Reach::params`] only.
    pub fn admits(&self, id: &str, key_id: Option<&str>, entries: &[IndexEntry]) -> bool {
        match self {
            Reach::Nothing => false,
            Reach::All => true,
            Reach::Grants(grants) => grants.iter().any(|grant| {
                grant.compartment.as_deref().is_none_or(|c| key_id == Some(c))
                    && grant.filters.iter().all(|f| filter_holds(f, id, entries))
            }),
        }
    }

    /// [`Reach::admits`] of a resource's content (a version read back, or about to be
    /// written): its index rows for the reach's constraints are extracted with `key`.
    pub fn admits_content(
        &self,
        res_type: &str,
        id: &str,
        key_id: Option<&str>,
        content: &serde_json::Map<String, serde_json::Value>,
        key: &BlindIndexKey,
    ) -> bool {
        match self {
            Reach::All => true,
            Reach::Nothing => false,
            Reach::Grants(_) => {
                let entries = super::extract::index_entries_of_params(res_type, &self.params(), content, key);
                self.admits(id, key_id, &entries)
            }
        }
    }

    /// [`Reach::admits_content`] of a stored version (a deletion has no content: only a reach
    /// of everything admits it).
    pub fn admits_record(&self, record: &VersionRecord, key: &BlindIndexKey) -> bool {
        if self.is_all() {
            return true;
        }
        let Some(content) = record.body.as_deref().and_then(|b| serde_json::from_slice(b).ok()) else { return false };
        self.admits_content(&record.res_type, &record.id, record.key_id.as_deref(), &content, key)
    }

    /// The indexed parameters [`Reach::admits`] looks at.
    pub fn params(&self) -> Vec<&'static Param> {
        let mut params: Vec<&'static Param> = Vec::new();
        if let Reach::Grants(grants) = self {
            for filter in grants.iter().flat_map(|g| &g.filters) {
                if let Filter::Param { param, .. } = filter
                    && !param.is_special()
                    && !params.iter().any(|p| p.code == param.code)
                {
                    params.push(param);
                }
            }
        }
        params
    }
}

/// Whether a filter that a [`Grant`] may carry holds for a resource: the in-memory twin of the
/// SQL the store builds (`store::search::row_condition`), row for row.
fn filter_holds(filter: &Filter, id: &str, entries: &[IndexEntry]) -> bool {
    let Filter::Param { param, condition, negated } = filter else { return false };
    let rows = || entries.iter().filter(|e| e.param == param.code && e.val.is_some());
    let holds = match condition {
        Condition::Token(matches) if param.code == "_id" => {
            matches.iter().any(|m| matches!(m, TokenMatch::Code(c) | TokenMatch::NoSystemCode(c) if c == id))
        }
        Condition::Token(matches) => rows().any(|row| matches.iter().any(|m| token_holds(m, row))),
        Condition::Reference(references) => rows().any(|row| {
            references.iter().any(|(res_type, target)| {
                row.val.as_deref() == Some(target.as_str())
                    && res_type.as_deref().is_none_or(|t| row.sys.as_deref() == Some(t))
            })
        }),
        // Grants carry token and reference conditions only (see `Parser::constraint`).
        _ => return false,
    };
    holds != *negated
}

fn token_holds(token: &TokenMatch, row: &IndexEntry) -> bool {
    let (sys, val) = (row.sys.as_deref(), row.val.as_deref());
    match token {
        TokenMatch::SystemCode(system, code) => sys == Some(system.as_str()) && val == Some(code.as_str()),
        TokenMatch::Code(code) | TokenMatch::Blind(code) => val == Some(code.as_str()),
        TokenMatch::NoSystemCode(code) => sys.is_none() && val == Some(code.as_str()),
        TokenMatch::System(system) => sys == Some(system.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::registry;

    fn row(param: &'static str, sys: Option<&str>, val: &str) -> IndexEntry {
        IndexEntry { param, sys: sys.map(str::to_owned), val: Some(val.to_owned()), unit: None, num: None, date: None }
    }

    fn category(code: &str) -> Filter {
        Filter::Param {
            param: registry::find("Observation", "category").unwrap(),
            condition: Condition::Token(vec![TokenMatch::Code(code.to_owned())]),
            negated: false,
        }
    }

    #[test]
    fn grants_need_their_compartment_and_every_filter() {
        let lab = [row("category", Some("http://cat"), "laboratory")];
        let reach =
            Reach::Grants(vec![Grant { compartment: Some("patient/a".into()), filters: vec![category("laboratory")] }]);
        assert!(reach.admits("o", Some("patient/a"), &lab));
        assert!(!reach.admits("o", Some("patient/b"), &lab), "another compartment");
        assert!(!reach.admits("o", None, &lab), "a deletion has no compartment");
        assert!(!reach.admits("o", Some("patient/a"), &[row("category", None, "vital-signs")]));
        assert!(!reach.admits("o", Some("patient/a"), &[row("code", None, "laboratory")]), "another parameter");
        assert_eq!(reach.params().iter().map(|p| p.code).collect::<Vec<_>>(), ["category"]);
    }

    #[test]
    fn any_grant_admits() {
        let reach = Reach::Grants(vec![
            Grant { compartment: None, filters: vec![category("laboratory")] },
            Grant { compartment: Some("patient/a".into()), filters: Vec::new() },
        ]);
        assert!(reach.admits("o", Some("patient/z"), &[row("category", None, "laboratory")]));
        assert!(reach.admits("o", Some("patient/a"), &[]));
        assert!(!reach.admits("o", Some("patient/z"), &[]));
        assert!(Reach::All.admits("o", None, &[]) && !Reach::Nothing.admits("o", Some("patient/a"), &[]));
    }

    #[test]
    fn token_forms_match_as_the_sql_does() {
        let coded = row("category", Some("http://cat"), "laboratory");
        let bare = row("category", None, "laboratory");
        let cases = [
            (TokenMatch::SystemCode("http://cat".into(), "laboratory".into()), true, false),
            (TokenMatch::Code("laboratory".into()), true, true),
            (TokenMatch::NoSystemCode("laboratory".into()), false, true),
            (TokenMatch::System("http://cat".into()), true, false),
        ];
        for (token, on_coded, on_bare) in cases {
            assert_eq!(token_holds(&token, &coded), on_coded, "{token:?}");
            assert_eq!(token_holds(&token, &bare), on_bare, "{token:?}");
        }
    }
}
