//! Search on both databases: the index rows written with every version, and the SQL a
//! [`SearchQuery`] becomes.
//!
//! Every filter is a set of resource ids (`h.res_id IN (SELECT s.res_id FROM search_index s
//! WHERE ...)`), so each parameter uses its index and the database intersects the sets. Paging
//! is keyset-based: a cursor holds the sort values and id of the row a page ended (or started)
//! at, never an offset, so pages stay stable while resources are added. All values are bound
//! parameters; the SQL text holds only fixed fragments and placeholders.

use serde_json::Value;
use sqlx::Row;

pub(super) use super::dialect::Sql;
use super::{Store, StoreError, VersionRecord};
use hearth_fhir::search::access::{Reach, Unrestricted, Visibility};
use hearth_fhir::search::dates::DateRange;
use hearth_fhir::search::query::{
    Condition, Filter, NumberMatch, Part, Prefix, QuantityMatch, SearchQuery, SortKind, StringMatch, TokenMatch,
};
use hearth_fhir::search::registry::{Kind, Param, Storage};

/// Ids per `IN (...)` list when loading resources by id.
pub(crate) const IN_CHUNK: usize = 400;

/// Where a page of matches starts: strictly after (or, `backwards`, before) the row whose sort
/// values are `values` (one per sort key, the type and id last). Paging cursors carry one;
/// `service::cursor` seals them so a client can neither read nor forge them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub backwards: bool,
    pub values: Vec<Value>,
}

/// One search match and its position in the sort order.
#[derive(Debug)]
pub struct Match {
    pub record: VersionRecord,
    pub position: Position,
}

/// Matches in the order they were found: the nearest to the starting position first (so,
/// paging backwards, in reverse sort order).
#[derive(Debug)]
pub struct SearchRows {
    pub matches: Vec<Match>,
    /// Whether more rows lie beyond the last one.
    pub more: bool,
}

/// Whose versions a history read lists.
#[derive(Debug, Clone, Copy)]
pub enum HistoryOf<'a> {
    System,
    Type(&'a str),
    Instance(&'a str, &'a str),
}

/// Filters a search carries besides its parameters (the compartment of
/// `GET /Patient/{id}/{type}`).
#[derive(Debug, Default, Clone)]
pub struct SearchScope {
    pub filters: Vec<Filter>,
}

/// [`reach_sql`] for one type, for the store's other reads.
pub(super) fn reach_condition(
    sql: &mut Sql,
    vis: &dyn Visibility,
    reach: &Reach,
    res_type: &str,
    alias: &str,
) -> Option<String> {
    reach_sql(sql, vis, reach, &Types::One(res_type), alias)
}

/// Which types a filter's index rows come from.
enum Types<'a> {
    One(&'a str),
    Several(&'a [String]),
}

impl<'a> Types<'a> {
    fn of(types: &'a [String]) -> Types<'a> {
        if types.len() == 1 { Types::One(&types[0]) } else { Types::Several(types) }
    }

    /// `s.res_type = $1` or `s.res_type IN ($1, $2)`.
    fn condition(&self, sql: &mut Sql, column: &str) -> String {
        match self {
            Types::One(t) => format!("{column} = {}", sql.text(*t)),
            Types::Several(types) => {
                let list: Vec<String> = types.iter().map(|t| sql.text(t.clone())).collect();
                format!("{column} IN ({})", list.join(", "))
            }
        }
    }

    /// The head columns a subquery's ids are compared with.
    fn head_key(&self, alias: &str) -> String {
        match self {
            Types::One(_) => format!("{alias}.res_id"),
            Types::Several(_) => format!("({alias}.res_type, {alias}.res_id)"),
        }
    }

    fn index_key(&self) -> &'static str {
        match self {
            Types::One(_) => "s.res_id",
            Types::Several(_) => "s.res_type, s.res_id",
        }
    }
}

/// A sort key's SQL expression and how its values decode.
struct SortExpr {
    sql: String,
    kind: SortKind,
    descending: bool,
}

impl Store {
    /// How many resources match `query` (plus `scope`) within `vis`'s reach.
    pub async fn search_count(
        &self,
        query: &SearchQuery,
        scope: &SearchScope,
        vis: &dyn Visibility,
    ) -> Result<i64, StoreError> {
        let types = Types::of(&query.types);
        let order = self.filter_order(&types, query, scope, vis).await?;
        let mut sql = Sql::on(self.backend);
        let text =
            format!("SELECT COUNT(*) FROM resource_head h WHERE {}", where_clause(&mut sql, vis, &types, &order));
        Ok(sql.query(text).fetch_one(&self.reader).await?.try_get::<i64, _>(0)?)
    }

    /// Up to `limit` resources matching `query` (plus `scope`) within `vis`'s reach, from
    /// `from` on (the start, if `None`) in the query's sort order.
    pub async fn search_rows(
        &self,
        query: &SearchQuery,
        scope: &SearchScope,
        vis: &dyn Visibility,
        from: Option<&Position>,
        limit: usize,
    ) -> Result<SearchRows, StoreError> {
        let types = Types::of(&query.types);
        let order = self.filter_order(&types, query, scope, vis).await?;
        let PageSql { sql, text, keys } = page_sql(self.backend, vis, &types, query, &order, from, limit)?;
        let backwards = from.is_some_and(|p| p.backwards);
        let rows = sql.query(text).fetch_all(&self.reader).await?;
        let more = rows.len() > limit;
        let mut found: Vec<(String, String, Vec<Value>)> = Vec::with_capacity(rows.len().min(limit));
        for row in rows.iter().take(limit) {
            let values = keys
                .iter()
                .enumerate()
                .map(|(i, k)| decode_sort_value(row, i + 2, k.kind))
                .collect::<Result<Vec<_>, _>>()?;
            found.push((row.try_get(0)?, row.try_get(1)?, values));
        }
        // Load the bodies, keeping the order.
        let mut by_type: std::collections::BTreeMap<&str, Vec<String>> = std::collections::BTreeMap::new();
        for (res_type, id, _) in &found {
            by_type.entry(res_type.as_str()).or_default().push(id.clone());
        }
        let mut loaded = std::collections::HashMap::new();
        for (res_type, ids) in by_type {
            for record in self.read_current_many(res_type, &ids, vis).await? {
                loaded.insert((record.res_type.clone(), record.id.clone()), record);
            }
        }
        let mut matches = Vec::with_capacity(found.len());
        for (res_type, id, values) in found {
            // A resource deleted (or moved out of reach) between the two queries is left out.
            if let Some(record) = loaded.remove(&(res_type, id)) {
                matches.push(Match { record, position: Position { backwards, values } });
            }
        }
        Ok(SearchRows { matches, more })
    }

    /// How many values a [`Position`] of `query` holds (its sort keys, plus type and id).
    pub fn position_len(query: &SearchQuery) -> usize {
        query.sort.len() + usize::from(query.types.len() > 1) + 1
    }

    /// The current, not deleted versions of `ids` (those that exist and are within `vis`'s
    /// reach), in no particular order.
    pub async fn read_current_many(
        &self,
        res_type: &str,
        ids: &[String],
        vis: &dyn Visibility,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        let mut records = Vec::with_capacity(ids.len());
        let reach = vis.reach(res_type);
        if reach.is_nothing() {
            return Ok(records);
        }
        for chunk in ids.chunks(IN_CHUNK) {
            let mut sql = Sql::on(self.backend);
            let t = sql.text(res_type);
            let list: Vec<String> = chunk.iter().map(|id| sql.text(id.clone())).collect();
            let within = reach_sql(&mut sql, vis, &reach, &Types::One(res_type), "h")
                .map_or_else(String::new, |c| format!(" AND {c}"));
            let text = format!(
                "SELECT v.version, v.last_updated_us, v.deleted, v.body, v.key_id, k.kek_version, k.wrapped, h.res_id \
                 FROM resource_head h JOIN resource_version v \
                   ON v.res_type = h.res_type AND v.res_id = h.res_id AND v.version = h.version \
                 LEFT JOIN data_key k ON k.key_id = v.key_id \
                 WHERE h.res_type = {t} AND h.deleted = 0 AND h.res_id IN ({}){within}",
                list.join(", ")
            );
            for row in sql.query(text).fetch_all(&self.reader).await? {
                let id: String = row.try_get(7)?;
                match self.version_record(res_type, &id, &row) {
                    Ok(record) => records.push(record),
                    // An erased patient's records are gone: searches skip them.
                    Err(StoreError::Erased) => {}
                    Err(other) => return Err(other),
                }
            }
        }
        Ok(records)
    }

    /// The (type, id) targets of reference parameter `param` (every reference parameter if
    /// `None`) of the `ids` of `res_type`, optionally only those of type `target`.
    pub async fn references_from(
        &self,
        res_type: &str,
        ids: &[String],
        params: &[&str],
        target: Option<&str>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(IN_CHUNK) {
            let mut sql = Sql::on(self.backend);
            let t = sql.text(res_type);
            let list: Vec<String> = chunk.iter().map(|id| sql.text(id.clone())).collect();
            let param_list: Vec<String> = params.iter().map(|p| sql.text(*p)).collect();
            // By resource: SQLite would otherwise walk every row of the parameter.
            let hint = self.backend.by_resource_hint();
            let mut text = format!(
                "SELECT DISTINCT sys, val FROM search_index{hint} WHERE res_type = {t} AND res_id IN ({}) \
                 AND param IN ({}) AND sys IS NOT NULL AND val IS NOT NULL AND sys <> {}",
                list.join(", "),
                param_list.join(", "),
                sql.text(hearth_fhir::search::extract::REFERENCE_IDENTIFIER)
            );
            if let Some(target) = target {
                text.push_str(&format!(" AND sys = {}", sql.text(target)));
            }
            for row in sql.query(text).fetch_all(&self.reader).await? {
                out.push((row.try_get(0)?, row.try_get(1)?));
            }
        }
        Ok(out)
    }

    /// The ids of `source_type` resources within `vis`'s reach whose reference parameters
    /// `params` point at one of `targets` of `target_type`; at most `limit` of them.
    pub async fn referencing(
        &self,
        source_type: &str,
        params: &[&str],
        target_type: &str,
        targets: &[String],
        vis: &dyn Visibility,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let reach = vis.reach(source_type);
        if reach.is_nothing() {
            return Ok(out);
        }
        for chunk in targets.chunks(IN_CHUNK) {
            let mut sql = Sql::on(self.backend);
            let s = sql.text(source_type);
            let t = sql.text(target_type);
            let list: Vec<String> = chunk.iter().map(|id| sql.text(id.clone())).collect();
            let param_list: Vec<String> = params.iter().map(|p| sql.text(*p)).collect();
            let within = reach_sql(&mut sql, vis, &reach, &Types::One(source_type), "h")
                .map_or_else(String::new, |c| format!(" AND {c}"));
            let limit = sql.int(i64::try_from(limit).unwrap_or(i64::MAX));
            let text = format!(
                "SELECT DISTINCT r.res_id FROM search_index r JOIN resource_head h \
                   ON h.res_type = r.res_type AND h.res_id = r.res_id \
                 WHERE r.res_type = {s} AND r.param IN ({}) AND r.sys = {t} AND r.val IS NOT NULL \
                 AND r.val IN ({}) AND h.deleted = 0{within} LIMIT {limit}",
                param_list.join(", "),
                list.join(", ")
            );
            for row in sql.query(text).fetch_all(&self.reader).await? {
                out.push(row.try_get(0)?);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// A page of the current resources sealed under data key `key_id` (a patient's
    /// compartment: the patient and every record about them), ordered by type and id, after
    /// the `after` position; optionally only `types` and those changed since `since_us`.
    /// Returns the records and whether more follow.
    pub async fn compartment_page(
        &self,
        key_id: &str,
        types: &[String],
        vis: &dyn Visibility,
        since_us: Option<i64>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<(Vec<VersionRecord>, bool), StoreError> {
        let mut sql = Sql::on(self.backend);
        let k = sql.text(key_id);
        let mut conditions = vec![format!("h.key_id = {k}"), "h.deleted = 0".to_owned()];
        if !types.is_empty() {
            let list: Vec<String> = types.iter().map(|t| sql.text(t.clone())).collect();
            conditions.push(format!("h.res_type IN ({})", list.join(", ")));
        }
        let types = (!types.is_empty()).then_some(types);
        conditions.extend(any_type_reach_sql(&mut sql, vis, types, "h", &|sql, reach, group| {
            reach_sql(sql, vis, reach, group, "h")
        }));
        if let Some(since) = since_us {
            conditions.push(format!("h.last_updated_us >= {}", sql.int(since)));
        }
        if let Some((res_type, id)) = after {
            let (t, i) = (sql.text(res_type), sql.text(id));
            conditions.push(format!("(h.res_type > {t} OR (h.res_type = {t} AND h.res_id > {i}))"));
        }
        let limit_bind = sql.int(i64::try_from(limit).unwrap_or(i64::MAX) + 1);
        let text = format!(
            "SELECT h.res_type, h.res_id, v.version, v.last_updated_us, v.deleted, v.body, v.key_id, k.kek_version, \
             k.wrapped FROM resource_head h{} JOIN resource_version v \
               ON h.res_type = v.res_type AND h.res_id = v.res_id AND h.version = v.version \
             LEFT JOIN data_key k ON k.key_id = v.key_id \
             WHERE {} ORDER BY h.res_type, h.res_id LIMIT {limit_bind}",
            sql.by_compartment(),
            conditions.join(" AND ")
        );
        let rows = sql.query(text).fetch_all(&self.reader).await?;
        self.version_page(&rows, limit, false)
    }

    /// Versions of every resource (of `res_type`, if given), newest first: those changed at
    /// or after `since_us` and strictly before the `before` position (a paging cursor of
    /// (last_updated_us, type, id, version)), at most `limit`. Returns them and whether more
    /// follow.
    ///
    /// Only versions `vis` may reach *as far as SQL can tell* (their compartment; see
    /// [`version_reach_sql`]): the caller checks each version's content against the rest.
    pub async fn history_all(
        &self,
        of: HistoryOf<'_>,
        vis: &dyn Visibility,
        since_us: Option<i64>,
        before: Option<(i64, &str, &str, i64)>,
        limit: usize,
    ) -> Result<(Vec<VersionRecord>, bool), StoreError> {
        let mut sql = Sql::on(self.backend);
        let mut conditions = vec!["1 = 1".to_owned()];
        match of {
            HistoryOf::System => {
                conditions.extend(any_type_reach_sql(&mut sql, vis, None, "v", &|sql, reach, _| {
                    version_reach_sql(sql, reach, "v")
                }));
            }
            HistoryOf::Type(t) | HistoryOf::Instance(t, _) => {
                conditions.push(format!("v.res_type = {}", sql.text(t)));
                conditions.extend(version_reach_sql(&mut sql, &vis.reach(t), "v"));
            }
        }
        if let HistoryOf::Instance(_, id) = of {
            conditions.push(format!("v.res_id = {}", sql.text(id)));
        }
        if let Some(since) = since_us {
            conditions.push(format!("v.last_updated_us >= {}", sql.int(since)));
        }
        if let Some((at, t, id, version)) = before {
            let (a, t, i, n) = (sql.int(at), sql.text(t), sql.text(id), sql.int(version));
            conditions.push(format!(
                "(v.last_updated_us < {a} OR (v.last_updated_us = {a} AND (v.res_type < {t} OR (v.res_type = {t} AND \
                 (v.res_id < {i} OR (v.res_id = {i} AND v.version < {n}))))))"
            ));
        }
        let limit_bind = sql.int(i64::try_from(limit).unwrap_or(i64::MAX) + 1);
        let text = format!(
            "SELECT v.res_type, v.res_id, v.version, v.last_updated_us, v.deleted, v.body, v.key_id, k.kek_version, \
             k.wrapped FROM resource_version v LEFT JOIN data_key k ON k.key_id = v.key_id \
             WHERE {} ORDER BY v.last_updated_us DESC, v.res_type DESC, v.res_id DESC, v.version DESC LIMIT {limit_bind}",
            conditions.join(" AND ")
        );
        let rows = sql.query(text).fetch_all(&self.reader).await?;
        // Erased records stay erased in history too.
        self.version_page(&rows, limit, true)
    }

    /// Decodes up to `limit` rows of (type, id, version columns...) into records, and whether
    /// more rows followed. Erased records are skipped if `skip_erased`, an error otherwise.
    pub(super) fn version_page(
        &self,
        rows: &[sqlx::any::AnyRow],
        limit: usize,
        skip_erased: bool,
    ) -> Result<(Vec<VersionRecord>, bool), StoreError> {
        let mut records = Vec::with_capacity(rows.len().min(limit));
        for row in rows.iter().take(limit) {
            let (res_type, id): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            match self.version_record_at(&res_type, &id, row, 2) {
                Ok(record) => records.push(record),
                Err(StoreError::Erased) if skip_erased => {}
                Err(other) => return Err(other),
            }
        }
        Ok((records, rows.len() > limit))
    }
}

/// The conditions on `h`: its types, live, within `vis`'s reach, and the filters. The most
/// selective filter (by its kind: ids, references and compartments first, dates and quantities
/// last) becomes an `IN (subquery)` that drives the search; the others are correlated checks
/// of each candidate, so a broad parameter (`code=`, `date=ge...`) never materialises all its
/// matches. When `order` carries the access predicate (see [`Ordered`]), it takes part in that
/// ordering; otherwise it is one more correlated check.
fn where_clause(sql: &mut Sql, vis: &dyn Visibility, types: &Types<'_>, order: &Ordered) -> String {
    let mut parts = vec![types.condition(sql, "h.res_type"), "h.deleted = 0".to_owned()];
    if !order.carries_reach {
        parts.extend(types_reach_sql(sql, vis, types, "h"));
    }
    for (position, filter) in order.filters.iter().enumerate() {
        parts.push(match filter {
            Filter::Compartment(key_id) if position > 0 => format!("h.key_id = {}", sql.text(key_id.clone())),
            filter if position > 0 => candidate_check(sql, vis, types, filter, "h"),
            filter => head_filter(sql, vis, types, filter, "h"),
        });
    }
    parts.join(" AND ")
}

/// A filter as a correlated check of the head row `alias` (the candidate's own index rows), for
/// filters that do not drive the query.
fn candidate_check(sql: &mut Sql, vis: &dyn Visibility, types: &Types<'_>, filter: &Filter, alias: &str) -> String {
    match filter {
        Filter::Param { param, condition, negated }
            if !param.is_special() && !matches!(condition, Condition::Missing(_)) =>
        {
            let row = row_condition(sql, vis, condition);
            let p = sql.text(param.code);
            let hint = sql.by_resource();
            format!(
                "{}EXISTS (SELECT 1 FROM search_index s{hint} WHERE s.res_type = {alias}.res_type \
                 AND s.res_id = {alias}.res_id AND s.param = {p} AND ({row}))",
                if *negated { "NOT " } else { "" }
            )
        }
        Filter::Compartment(key_id) => format!("{alias}.key_id = {}", sql.text(key_id.clone())),
        other => head_filter(sql, vis, types, other, alias),
    }
}

/// A search's filters in the order they are applied (the first drives), and whether they
/// carry the access predicate themselves.
struct Ordered {
    filters: Vec<Filter>,
    carries_reach: bool,
}

impl Ordered {
    /// `filters` plus, for a search of one type whose reach is one grant (one compartment and
    /// constraints: the common case of a `patient/` or constrained token), the grant's
    /// compartment and constraints as filters, so the most selective of all drives the query.
    /// Other reaches (several grants, several types) stay one correlated check.
    fn new(filters: Vec<Filter>, vis: &dyn Visibility, types: &Types<'_>) -> Ordered {
        let mut filters = filters;
        let carries_reach = match types {
            Types::One(t) => match vis.reach(t) {
                Reach::All => true,
                Reach::Grants(grants) if grants.len() == 1 => {
                    let grant = &grants[0];
                    filters.extend(grant.compartment.iter().map(|k| Filter::Compartment(k.clone())));
                    filters.extend(grant.filters.iter().cloned());
                    true
                }
                _ => false,
            },
            Types::Several(_) => false,
        };
        Ordered { filters, carries_reach }
    }
}

/// The condition that head row `alias` (of one of `types`, which all share `reach`) is within
/// `reach`; `None` when every resource of the types is.
fn reach_sql(sql: &mut Sql, vis: &dyn Visibility, reach: &Reach, types: &Types<'_>, alias: &str) -> Option<String> {
    match reach {
        Reach::All => None,
        Reach::Nothing => Some("1 = 0".to_owned()),
        Reach::Grants(grants) => {
            let alternatives: Vec<String> = grants
                .iter()
                .map(|grant| {
                    let mut parts = Vec::new();
                    if let Some(compartment) = &grant.compartment {
                        parts.push(format!("{alias}.key_id = {}", sql.text(compartment.clone())));
                    }
                    for filter in &grant.filters {
                        parts.push(candidate_check(sql, vis, types, filter, alias));
                    }
                    if parts.is_empty() { "1 = 1".to_owned() } else { format!("({})", parts.join(" AND ")) }
                })
                .collect();
            Some(format!("({})", alternatives.join(" OR ")))
        }
    }
}

/// What SQL can tell of `reach` on a *version* row `alias` (history, vread): its compartment.
/// A necessary condition only: scope constraints are checked on each version's content in
/// memory, since the search index describes current versions alone. `None`: no condition.
pub(super) fn version_reach_sql(sql: &mut Sql, reach: &Reach, alias: &str) -> Option<String> {
    match reach {
        Reach::All => None,
        Reach::Nothing => Some("1 = 0".to_owned()),
        Reach::Grants(grants) => {
            let mut keys = Vec::new();
            for grant in grants {
                match &grant.compartment {
                    Some(key) => keys.push(sql.text(key.clone())),
                    // Deletion markers have no key, and satisfy no constraint.
                    None => return Some(format!("{alias}.key_id IS NOT NULL")),
                }
            }
            Some(format!("{alias}.key_id IN ({})", keys.join(", ")))
        }
    }
}

/// The condition that a row `alias` of any resource type is within reach: the types grouped by
/// their reach, each group as `alias.res_type IN (...) AND <its condition>`, rendered by
/// `render` (head rows: [`reach_sql`]; version rows: [`version_reach_sql`]). Only `types` when
/// given, else every R4 type. `None`: everything is within reach.
fn any_type_reach_sql(
    sql: &mut Sql,
    vis: &dyn Visibility,
    types: Option<&[String]>,
    alias: &str,
    render: &dyn Fn(&mut Sql, &Reach, &Types<'_>) -> Option<String>,
) -> Option<String> {
    let names: Vec<String> = match types {
        Some(types) => types.to_vec(),
        None => hearth_fhir::resource_types::R4_RESOURCE_TYPES.iter().map(|t| (*t).to_owned()).collect(),
    };
    let mut groups: Vec<(Reach, Vec<String>)> = Vec::new();
    for name in names {
        let reach = vis.reach(&name);
        match groups.iter_mut().find(|(r, _)| *r == reach) {
            Some((_, members)) => members.push(name),
            None => groups.push((reach, vec![name])),
        }
    }
    if groups.iter().all(|(r, _)| r.is_all()) {
        return None;
    }
    let alternatives: Vec<String> = groups
        .iter()
        .filter(|(reach, _)| !reach.is_nothing())
        .map(|(reach, members)| {
            let group = Types::of(members);
            let is_type = group.condition(sql, &format!("{alias}.res_type"));
            match render(sql, reach, &group) {
                Some(within) => format!("({is_type} AND {within})"),
                None => is_type,
            }
        })
        .collect();
    Some(if alternatives.is_empty() { "1 = 0".to_owned() } else { format!("({})", alternatives.join(" OR ")) })
}

/// [`reach_sql`] for a head row of any of `types`, each with its own reach.
fn types_reach_sql(sql: &mut Sql, vis: &dyn Visibility, types: &Types<'_>, alias: &str) -> Option<String> {
    match types {
        Types::One(t) => reach_sql(sql, vis, &vis.reach(t), types, alias),
        Types::Several(list) => any_type_reach_sql(sql, vis, Some(list), alias, &|sql, reach, group| {
            reach_sql(sql, vis, reach, group, alias)
        }),
    }
}

/// The SELECT of one page and how its sort keys decode.
struct PageSql {
    sql: Sql,
    text: String,
    keys: Vec<SortExpr>,
}

/// The query for up to `limit` (plus one, to tell whether more follow) matches of `query` from
/// `from` on, with its filters in `order` (the first drives the search).
fn page_sql(
    backend: super::Backend,
    vis: &dyn Visibility,
    types: &Types<'_>,
    query: &SearchQuery,
    order: &Ordered,
    from: Option<&Position>,
    limit: usize,
) -> Result<PageSql, StoreError> {
    let mut sql = Sql::on(backend);
    let where_clause = where_clause(&mut sql, vis, types, order);
    let mut keys: Vec<SortExpr> =
        query.sort.iter().map(|k| sort_expr(&mut sql, k.kind, &k.code, k.descending)).collect();
    if matches!(types, Types::Several(_)) {
        keys.push(SortExpr { sql: "h.res_type".into(), kind: SortKind::Id, descending: false });
    }
    keys.push(SortExpr { sql: "h.res_id".into(), kind: SortKind::Id, descending: false });
    let backwards = from.is_some_and(|p| p.backwards);
    let mut conditions = vec![where_clause];
    if let Some(from) = from {
        if from.values.len() != keys.len() {
            return Err(StoreError::BadCursor);
        }
        conditions.push(keyset_condition(&mut sql, &keys, &from.values, backwards)?);
    }
    let order: Vec<String> =
        keys.iter().map(|k| format!("{} {}", k.sql, if k.descending != backwards { "DESC" } else { "ASC" })).collect();
    let columns: Vec<String> = keys.iter().map(|k| k.sql.clone()).collect();
    let limit = sql.int(i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1);
    let text = format!(
        "SELECT h.res_type, h.res_id, {} FROM resource_head h WHERE {} ORDER BY {} LIMIT {limit}",
        columns.join(", "),
        conditions.join(" AND "),
        order.join(", ")
    );
    Ok(PageSql { sql, text, keys })
}

/// For the fuzz targets (`host/fuzz`): the SQL of `query`'s total count and first page on
/// `backend` within `vis`'s reach, filters in the order given, each with how many values it
/// binds. Nothing runs.
pub fn search_sql_text(
    backend: super::Backend,
    vis: &dyn Visibility,
    query: &SearchQuery,
) -> Result<Vec<(String, usize)>, StoreError> {
    let types = Types::of(&query.types);
    let order = Ordered::new(query.filters.clone(), vis, &types);
    let mut count_sql = Sql::on(backend);
    let count_where = where_clause(&mut count_sql, vis, &types, &order);
    let page = page_sql(backend, vis, &types, query, &order, None, query.count)?;
    Ok(vec![
        (format!("SELECT COUNT(*) FROM resource_head h WHERE {count_where}"), count_sql.bound()),
        (page.text, page.sql.bound()),
    ])
}

/// A filter as a condition on the head row `alias`.
fn head_filter(sql: &mut Sql, vis: &dyn Visibility, types: &Types<'_>, filter: &Filter, alias: &str) -> String {
    match filter {
        Filter::Nothing => "1 = 0".to_owned(),
        // Driving: the compartment's resources of the type, from their `_compartment` index
        // rows: the same shape as a `patient=` search, so both databases plan it as well (a
        // prepared statement's generic plan on PostgreSQL included).
        Filter::Compartment(key_id) => {
            let rows = compartment_rows(sql, types, key_id);
            format!("{} IN ({rows})", types.head_key(alias))
        }
        Filter::Param { param, condition, negated } if param.is_special() => {
            let clause = special_condition(sql, param, condition, alias);
            if *negated { format!("NOT ({clause})") } else { clause }
        }
        Filter::Param { param, condition: Condition::Missing(missing), .. } => {
            let rows = index_rows(sql, types, param, None);
            format!("{} {} ({rows})", types.head_key(alias), if *missing { "NOT IN" } else { "IN" })
        }
        Filter::Param { param, condition, negated } => {
            let row = row_condition(sql, vis, condition);
            let rows = index_rows(sql, types, param, Some(row));
            format!("{} {} ({rows})", types.head_key(alias), if *negated { "NOT IN" } else { "IN" })
        }
        Filter::Has { source, ref_param, inner } => {
            let Types::One(target) = types else { return "1 = 0".to_owned() };
            let s = sql.text(source.clone());
            let p = sql.text(ref_param.code);
            let t = sql.text(*target);
            let inner_ids = matching_ids(sql, vis, source, inner);
            format!(
                "{alias}.res_id IN (SELECT r.val FROM search_index r WHERE r.res_type = {s} AND r.param = {p} \
                 AND r.sys = {t} AND r.res_id IN ({inner_ids}))"
            )
        }
    }
}

impl Store {
    /// The search's filters, the one to drive the query first. Filters are ranked by kind
    /// (ids and references before codes, codes before dates); among equality filters of the
    /// best rank, a quick count of each one's index rows (capped) picks the most selective, so
    /// `family=&birthdate=` starts from the birth date rather than a common surname.
    async fn filter_order(
        &self,
        types: &Types<'_>,
        query: &SearchQuery,
        scope: &SearchScope,
        vis: &dyn Visibility,
    ) -> Result<Ordered, StoreError> {
        let filters: Vec<Filter> = query.filters.iter().chain(&scope.filters).cloned().collect();
        let mut order = Ordered::new(filters, vis, types);
        let filters = &mut order.filters;
        filters.sort_by_key(selectivity_rank);
        let best = filters.first().map(selectivity_rank);
        let probed: Vec<usize> =
            (0..filters.len()).filter(|&i| Some(selectivity_rank(&filters[i])) == best && best <= Some(3)).collect();
        if probed.len() < 2 {
            return Ok(order);
        }
        let mut counts = Vec::with_capacity(probed.len());
        for &i in &probed {
            let mut sql = Sql::on(self.backend);
            let rows = match &filters[i] {
                Filter::Compartment(key_id) => compartment_rows(&mut sql, types, key_id),
                Filter::Param { param, condition, negated: false }
                    if !param.is_special() && !matches!(condition, Condition::Chain { .. }) =>
                {
                    let row = row_condition(&mut sql, &Unrestricted, condition);
                    index_rows(&mut sql, types, param, Some(row))
                }
                _ => {
                    counts.push((i64::MAX, i));
                    continue;
                }
            };
            let text = format!("SELECT COUNT(*) FROM ({rows} LIMIT 1000) probe");
            counts.push((sql.query(text).fetch_one(&self.reader).await?.try_get::<i64, _>(0)?, i));
        }
        let cheapest = counts.iter().min().map_or(0, |&(_, i)| i);
        filters.swap(0, cheapest);
        Ok(order)
    }
}

/// How few resources a filter is likely to match, by its kind alone (lower: fewer).
fn selectivity_rank(filter: &Filter) -> u8 {
    match filter {
        Filter::Nothing => 0,
        Filter::Compartment(_) => 1,
        Filter::Param { negated: true, .. } | Filter::Param { condition: Condition::Missing(_), .. } => 9,
        Filter::Param { param, condition, .. } => match condition {
            _ if param.code == "_id" => 0,
            Condition::Reference(_) | Condition::Chain { .. } => 1,
            _ if param.is_blind() => 1,
            Condition::String(_) => 2,
            Condition::Token(_) => 3,
            Condition::Composite(_) => 4,
            _ if param.code == "_lastUpdated" => 6,
            Condition::Date(_) | Condition::Number(_) | Condition::Quantity(_) => 5,
            Condition::Missing(_) => 9,
        },
        Filter::Has { .. } => 2,
    }
}

/// `SELECT s.res_id FROM search_index s WHERE <type> AND s.param = ... AND <row>`. The
/// value, date and number indexes are partial (each holds only the rows with such a value, so
/// a write touches fewer index pages); the explicit `IS NOT NULL` term lets both databases'
/// planners use them whatever the row condition looks like.
fn index_rows(sql: &mut Sql, types: &Types<'_>, param: &Param, row: Option<String>) -> String {
    let type_condition = types.condition(sql, "s.res_type");
    let p = sql.text(param.code);
    let present = match param.kind {
        Kind::Date if param.storage == Storage::Plain => "s.date_lo IS NOT NULL",
        Kind::Number | Kind::Quantity => "s.num IS NOT NULL",
        _ => "s.val IS NOT NULL",
    };
    let mut text = format!(
        "SELECT {} FROM search_index s WHERE {type_condition} AND s.param = {p} AND {present}",
        types.index_key()
    );
    if let Some(row) = row {
        text.push_str(&format!(" AND ({row})"));
    }
    text
}

/// The index rows of the resources of `types` in compartment `key_id`.
fn compartment_rows(sql: &mut Sql, types: &Types<'_>, key_id: &str) -> String {
    let type_condition = types.condition(sql, "s.res_type");
    let p = sql.text(hearth_fhir::search::extract::COMPARTMENT);
    let k = sql.text(key_id);
    format!(
        "SELECT {} FROM search_index s WHERE {type_condition} AND s.param = {p} AND s.val IS NOT NULL AND s.val = {k}",
        types.index_key()
    )
}

/// The ids of live `res_type` resources within `vis`'s reach matching `filter` (for chains
/// and `_has`: a hop never reaches further than the request itself may).
fn matching_ids(sql: &mut Sql, vis: &dyn Visibility, res_type: &str, filter: &Filter) -> String {
    let reach = vis.reach(res_type);
    match filter {
        // Within reach of everything: the index rows alone answer (they exist only for live
        // resources).
        Filter::Param { param, condition, negated: false }
            if reach.is_all() && !param.is_special() && !matches!(condition, Condition::Missing(_)) =>
        {
            let row = row_condition(sql, vis, condition);
            index_rows(sql, &Types::One(res_type), param, Some(row))
        }
        other => {
            // Nested subqueries get their own alias, one level deeper each time.
            let alias = format!("h{}", sql.bound());
            let t = sql.text(res_type);
            let clause = head_filter(sql, vis, &Types::One(res_type), other, &alias);
            let within = reach_sql(sql, vis, &reach, &Types::One(res_type), &alias)
                .map_or_else(String::new, |c| format!(" AND {c}"));
            format!(
                "SELECT {alias}.res_id FROM resource_head {alias} WHERE {alias}.res_type = {t} \
                 AND {alias}.deleted = 0 AND {clause}{within}"
            )
        }
    }
}

/// `_id` and `_lastUpdated`, answered from the head row `alias`.
fn special_condition(sql: &mut Sql, param: &Param, condition: &Condition, alias: &str) -> String {
    match (param.code, condition) {
        ("_id", Condition::Token(matches)) => {
            let ids: Vec<String> = matches
                .iter()
                .map(|m| match m {
                    TokenMatch::Code(id) | TokenMatch::NoSystemCode(id) => sql.text(id.clone()),
                    _ => "NULL".to_owned(),
                })
                .collect();
            format!("{alias}.res_id IN ({})", ids.join(", "))
        }
        ("_lastUpdated", Condition::Date(dates)) => {
            let column = format!("{alias}.last_updated_us");
            let alternatives: Vec<String> =
                dates.iter().map(|(prefix, range)| date_condition(sql, *prefix, *range, &column, &column)).collect();
            format!("({})", alternatives.join(" OR "))
        }
        _ => "1 = 0".to_owned(),
    }
}

/// The condition one index row `s` must meet.
fn row_condition(sql: &mut Sql, vis: &dyn Visibility, condition: &Condition) -> String {
    let any = |parts: Vec<String>| if parts.is_empty() { "1 = 0".to_owned() } else { parts.join(" OR ") };
    match condition {
        Condition::Token(matches) => any(matches.iter().map(|m| token_condition(sql, m)).collect()),
        Condition::String(matches) => any(matches
            .iter()
            .map(|m| match m {
                StringMatch::StartsWith(prefix) => {
                    let lo = sql.text(prefix.clone());
                    let hi = sql.text(format!("{prefix}\u{10FFFF}"));
                    format!("(s.val >= {lo} AND s.val < {hi})")
                }
                StringMatch::Exact(value) | StringMatch::Blind(value) => format!("s.val = {}", sql.text(value.clone())),
                StringMatch::AsGiven(value) => format!("s.unit = {}", sql.text(value.clone())),
                StringMatch::Contains(part) => {
                    format!("s.val LIKE {} ESCAPE '\\'", sql.text(format!("%{}%", like_escape(part))))
                }
            })
            .collect()),
        Condition::Date(dates) => any(dates
            .iter()
            .map(|(prefix, range)| date_condition(sql, *prefix, *range, "s.date_lo", "s.date_hi"))
            .collect()),
        Condition::Number(numbers) => any(numbers.iter().map(|n| number_condition(sql, n)).collect()),
        Condition::Quantity(quantities) => any(quantities.iter().map(|q| quantity_condition(sql, q)).collect()),
        Condition::Composite(pairs) => any(pairs
            .iter()
            .map(|(first, second)| format!("({} AND {})", part_condition(sql, first), part_condition(sql, second)))
            .collect()),
        Condition::Reference(references) => any(references
            .iter()
            .map(|(res_type, id)| match res_type {
                Some(t) => format!("(s.sys = {} AND s.val = {})", sql.text(t.clone()), sql.text(id.clone())),
                None => format!("s.val = {}", sql.text(id.clone())),
            })
            .collect()),
        Condition::Chain { target, inner } => {
            let t = sql.text(target.clone());
            let ids = matching_ids(sql, vis, target, inner);
            format!("s.sys = {t} AND s.val IN ({ids})")
        }
        Condition::Missing(_) => "1 = 1".to_owned(),
    }
}

/// One component of a composite row (see `extract::composite` for where each part is).
fn part_condition(sql: &mut Sql, part: &Part) -> String {
    match part {
        Part::Token(token) => token_condition(sql, token),
        Part::Reference(Some(t), id) => {
            format!("(s.sys = {} AND s.val = {})", sql.text(t.clone()), sql.text(id.clone()))
        }
        Part::Reference(None, id) => format!("s.val = {}", sql.text(id.clone())),
        // The quantity's system is not kept in a composite row (`sys` holds the code's).
        Part::Quantity(q) => quantity_condition(sql, &QuantityMatch { system: None, ..q.clone() }),
        Part::Number(n) => number_condition(sql, n),
        Part::Date(prefix, range) => date_condition(sql, *prefix, *range, "s.date_lo", "s.date_hi"),
        Part::UnitIs(value) => format!("s.unit = {}", sql.text(value.clone())),
        Part::UnitStartsWith(prefix) => {
            let lo = sql.text(prefix.clone());
            let hi = sql.text(format!("{prefix}\u{10FFFF}"));
            format!("(s.unit >= {lo} AND s.unit < {hi})")
        }
        Part::UnitEndsWith(suffix) => {
            format!("s.unit LIKE {} ESCAPE '\\'", sql.text(format!("%{}", like_escape(suffix))))
        }
    }
}

fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

fn token_condition(sql: &mut Sql, token: &TokenMatch) -> String {
    match token {
        TokenMatch::SystemCode(system, code) => {
            format!("(s.sys = {} AND s.val = {})", sql.text(system.clone()), sql.text(code.clone()))
        }
        TokenMatch::Code(code) | TokenMatch::Blind(code) => format!("s.val = {}", sql.text(code.clone())),
        TokenMatch::NoSystemCode(code) => format!("(s.sys IS NULL AND s.val = {})", sql.text(code.clone())),
        TokenMatch::System(system) => format!("s.sys = {}", sql.text(system.clone())),
    }
}

/// FHIR date comparison between the search range and a stored range [`lo`, `hi`].
fn date_condition(sql: &mut Sql, prefix: Prefix, range: DateRange, lo: &str, hi: &str) -> String {
    let (a, b) = (range.lo, range.hi);
    match prefix {
        Prefix::Eq => format!("({lo} >= {} AND {hi} <= {})", sql.int(a), sql.int(b)),
        Prefix::Ne => format!("NOT ({lo} >= {} AND {hi} <= {})", sql.int(a), sql.int(b)),
        Prefix::Gt => format!("{hi} > {}", sql.int(b)),
        Prefix::Lt => format!("{lo} < {}", sql.int(a)),
        Prefix::Ge => format!("({hi} > {} OR ({lo} >= {} AND {hi} <= {}))", sql.int(b), sql.int(a), sql.int(b)),
        Prefix::Le => format!("({lo} < {} OR ({lo} >= {} AND {hi} <= {}))", sql.int(a), sql.int(a), sql.int(b)),
        Prefix::Sa => format!("{lo} > {}", sql.int(b)),
        Prefix::Eb => format!("{hi} < {}", sql.int(a)),
        Prefix::Ap => {
            // Approximately: within 10% of the distance from now, and at least a day.
            let now = hearth_fhir::instant::now_us();
            let margin = ((now - a).abs() / 10).max(86_400_000_000);
            format!("({lo} <= {} AND {hi} >= {})", sql.int(b.saturating_add(margin)), sql.int(a.saturating_sub(margin)))
        }
    }
}

fn number_condition(sql: &mut Sql, n: &NumberMatch) -> String {
    match n.prefix {
        Prefix::Eq => format!("(s.num >= {} AND s.num < {})", sql.float(n.lo), sql.float(n.hi)),
        Prefix::Ne => format!("NOT (s.num >= {} AND s.num < {})", sql.float(n.lo), sql.float(n.hi)),
        Prefix::Gt | Prefix::Sa => format!("s.num > {}", sql.float(n.value)),
        Prefix::Lt | Prefix::Eb => format!("s.num < {}", sql.float(n.value)),
        Prefix::Ge => format!("s.num >= {}", sql.float(n.value)),
        Prefix::Le => format!("s.num <= {}", sql.float(n.value)),
        Prefix::Ap => {
            let margin = (n.value * 0.1).abs();
            format!("(s.num >= {} AND s.num <= {})", sql.float(n.value - margin), sql.float(n.value + margin))
        }
    }
}

fn quantity_condition(sql: &mut Sql, q: &QuantityMatch) -> String {
    let mut parts = vec![number_condition(sql, &q.number)];
    if let Some(system) = &q.system {
        parts.push(format!("s.sys = {}", sql.text(system.clone())));
    }
    if let Some(unit) = &q.unit {
        parts.push(format!("s.unit = {}", sql.text(unit.clone())));
    }
    format!("({})", parts.join(" AND "))
}

/// The SQL of one `_sort` key: the smallest value ascending, the largest descending (as FHIR
/// asks for repeating elements); resources without a value sort last either way.
fn sort_expr(sql: &mut Sql, kind: SortKind, code: &str, descending: bool) -> SortExpr {
    let (column, fallback) = match (kind, descending) {
        (SortKind::Id, _) => return SortExpr { sql: "h.res_id".into(), kind, descending },
        (SortKind::LastUpdated, _) => return SortExpr { sql: "h.last_updated_us".into(), kind, descending },
        (SortKind::Date, false) => ("MIN(s.date_lo)", sql.int(i64::MAX)),
        (SortKind::Date, true) => ("MAX(s.date_hi)", sql.int(i64::MIN)),
        (SortKind::Number, false) => ("MIN(s.num)", sql.float(f64::MAX)),
        (SortKind::Number, true) => ("MAX(s.num)", sql.float(f64::MIN)),
        (SortKind::Text, false) => ("MIN(s.val)", sql.text("\u{10FFFF}")),
        (SortKind::Text, true) => ("MAX(s.val)", sql.text("")),
    };
    let p = sql.text(code);
    SortExpr {
        sql: format!(
            "COALESCE((SELECT {column} FROM search_index s WHERE s.res_type = h.res_type AND s.res_id = h.res_id \
             AND s.param = {p}), {fallback})"
        ),
        kind,
        descending,
    }
}

fn decode_sort_value(row: &sqlx::any::AnyRow, at: usize, kind: SortKind) -> Result<Value, StoreError> {
    Ok(match kind {
        SortKind::Id | SortKind::Text => Value::String(row.try_get(at)?),
        SortKind::LastUpdated | SortKind::Date => Value::from(row.try_get::<i64, _>(at)?),
        SortKind::Number => Value::from(row.try_get::<f64, _>(at)?),
    })
}

/// Rows strictly after (or, `backwards`, before) the cursor's position in the sort order:
/// `(k1 > c1) OR (k1 = c1 AND ((k2 > c2) OR (k2 = c2 AND ...)))`.
fn keyset_condition(sql: &mut Sql, keys: &[SortExpr], values: &[Value], backwards: bool) -> Result<String, StoreError> {
    let mut condition = String::new();
    for (key, value) in keys.iter().zip(values).rev() {
        let bound = match (key.kind, value) {
            (SortKind::Id | SortKind::Text, Value::String(s)) => sql.text(s.clone()),
            (SortKind::LastUpdated | SortKind::Date, Value::Number(n)) => {
                sql.int(n.as_i64().ok_or(StoreError::BadCursor)?)
            }
            (SortKind::Number, Value::Number(n)) => sql.float(n.as_f64().ok_or(StoreError::BadCursor)?),
            _ => return Err(StoreError::BadCursor),
        };
        let op = if key.descending != backwards { "<" } else { ">" };
        condition = if condition.is_empty() {
            format!("{} {op} {bound}", key.sql)
        } else {
            format!("({} {op} {bound} OR ({} = {bound} AND {condition}))", key.sql, key.sql)
        };
    }
    Ok(format!("({condition})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_conditions_nest_keys_in_order() {
        let mut sql = Sql::default();
        let keys = [
            SortExpr { sql: "k1".into(), kind: SortKind::Date, descending: true },
            SortExpr { sql: "h.res_id".into(), kind: SortKind::Id, descending: false },
        ];
        let text = keyset_condition(&mut sql, &keys, &[Value::from(7), Value::from("x")], false).unwrap();
        assert_eq!(text, "((k1 < $2 OR (k1 = $2 AND h.res_id > $1)))");
        let back = keyset_condition(&mut Sql::default(), &keys, &[Value::from(7), Value::from("x")], true).unwrap();
        assert!(back.contains("k1 > $2") && back.contains("h.res_id < $1"), "{back}");
    }
}
