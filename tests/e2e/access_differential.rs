//! The differential access test (issue 22): random small data sets over several patients and
//! types, random principals (SMART v1/v2 scopes with constraints, patient context, system
//! scopes) and random searches drawn from the registry (chains, `_has`, includes, `_sort`,
//! `_count`, `_summary=count`, `_total`), paged to the end.
//!
//! For each search, every page, total and link must be what an independent reference model
//! (written here, from the SMART and FHIR rules, without calling the server's access code)
//! says the principal may see; and the whole transcript must be identical on a second server
//! whose data differs only in resources the principal cannot read (some added, some left out).
//!
//! `HEARTH_DIFFERENTIAL_SEED` (a number) explores other data; a failing seed is printed and
//! belongs in `REGRESSION_SEEDS`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::harness::{Db, Server};
use crate::on_both_databases;

/// Data sets per run and searches per data set (each run on two servers, paged to the end).
const DATA_SETS: u64 = 8;
const SEARCHES_PER_SET: usize = 40;
/// Seeds that once failed, replayed first.
const REGRESSION_SEEDS: &[u64] = &[];

on_both_databases!(searches_see_exactly_what_the_reference_model_allows);

/// splitmix64: small, deterministic, good enough to pick test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const CATEGORIES: &[&str] = &["laboratory", "vital-signs", "survey"];
const OBS_CODES: &[&str] = &["c1", "c2", "c3"];
const CONDITION_CODES: &[&str] = &["X", "Y", "Z"];
const GENDERS: &[&str] = &["female", "male"];

/// A resource as the model knows it: what its JSON says, in the terms searches use.
#[derive(Debug, Clone)]
struct Res {
    rtype: &'static str,
    id: String,
    /// The patient compartment it is in (the patient itself, or a `subject` Patient).
    patient: Option<String>,
    /// (parameter, system, code)
    tokens: Vec<(&'static str, Option<&'static str>, String)>,
    /// (parameter, target type, target id)
    refs: Vec<(&'static str, String, String)>,
    /// The effective day of an Observation.
    day: Option<String>,
    json: Value,
}

impl Res {
    fn key(&self) -> String {
        format!("{}/{}", self.rtype, self.id)
    }
    fn has_token(&self, param: &str, value: &str) -> bool {
        let (system, code) = match value.split_once('|') {
            Some((s, c)) => (Some(s), c),
            None => (None, value),
        };
        self.tokens.iter().any(|(p, s, c)| *p == param && c == code && system.is_none_or(|want| *s == Some(want)))
    }
    fn targets(&self, param: &str) -> Vec<(String, String)> {
        self.refs.iter().filter(|(p, _, _)| *p == param).map(|(_, t, i)| (t.clone(), i.clone())).collect()
    }
}

fn patient(id: &str, gender: &str, gp: Option<&str>) -> Res {
    let mut json = json!({"resourceType": "Patient", "id": id, "gender": gender});
    let mut refs = Vec::new();
    if let Some(org) = gp {
        json["generalPractitioner"] = json!([{"reference": format!("Organization/{org}")}]);
        refs.push(("general-practitioner", "Organization".to_owned(), org.to_owned()));
    }
    Res {
        rtype: "Patient",
        id: id.to_owned(),
        patient: Some(id.to_owned()),
        tokens: vec![("gender", None, gender.to_owned())],
        refs,
        day: None,
        json,
    }
}

fn organization(id: &str) -> Res {
    Res {
        rtype: "Organization",
        id: id.to_owned(),
        patient: None,
        tokens: Vec::new(),
        refs: Vec::new(),
        day: None,
        json: json!({"resourceType": "Organization", "id": id, "name": format!("Clinic {id}")}),
    }
}

struct ObservationSpec<'a> {
    id: String,
    subject: Option<(&'a str, String)>,
    category: &'static str,
    code: &'static str,
    status: &'static str,
    day: String,
    focus: Option<String>,
    performer: Option<String>,
}

fn observation(spec: ObservationSpec<'_>) -> Res {
    let mut json = json!({"resourceType": "Observation", "id": spec.id, "status": spec.status,
        "category": [{"coding": [{"system": CATEGORY, "code": spec.category}]}],
        "code": {"coding": [{"system": LOINC, "code": spec.code}]},
        "effectiveDateTime": spec.day});
    let mut refs = Vec::new();
    let mut compartment = None;
    if let Some((t, id)) = &spec.subject {
        json["subject"] = json!({"reference": format!("{t}/{id}")});
        refs.push(("subject", (*t).to_owned(), id.clone()));
        if *t == "Patient" {
            refs.push(("patient", "Patient".to_owned(), id.clone()));
            compartment = Some(id.clone());
        }
    }
    if let Some(p) = &spec.focus {
        json["focus"] = json!([{"reference": format!("Patient/{p}")}]);
        refs.push(("focus", "Patient".to_owned(), p.clone()));
    }
    if let Some(o) = &spec.performer {
        json["performer"] = json!([{"reference": format!("Organization/{o}")}]);
        refs.push(("performer", "Organization".to_owned(), o.clone()));
    }
    Res {
        rtype: "Observation",
        id: spec.id,
        patient: compartment,
        tokens: vec![
            ("category", Some(CATEGORY), spec.category.to_owned()),
            ("code", Some(LOINC), spec.code.to_owned()),
            ("status", None, spec.status.to_owned()),
        ],
        refs,
        day: Some(spec.day),
        json,
    }
}

fn condition(id: &str, patient: &str, code: &'static str) -> Res {
    Res {
        rtype: "Condition",
        id: id.to_owned(),
        patient: Some(patient.to_owned()),
        tokens: vec![("code", Some(SNOMED), code.to_owned())],
        refs: vec![
            ("subject", "Patient".to_owned(), patient.to_owned()),
            ("patient", "Patient".to_owned(), patient.to_owned()),
        ],
        day: None,
        json: json!({"resourceType": "Condition", "id": id, "subject": {"reference": format!("Patient/{patient}")},
            "code": {"coding": [{"system": SNOMED, "code": code}]}}),
    }
}

/// A random data set; ids start with `prefix` (so extras never collide with it).
fn data_set(rng: &mut Rng, prefix: &str, patients: &[String], orgs: &[String]) -> Vec<Res> {
    let mut out = Vec::new();
    let day = |rng: &mut Rng| format!("2026-{:02}-{:02}", 1 + rng.below(6), 1 + rng.below(28));
    for i in 0..8 + rng.below(8) {
        let subject = match rng.below(10) {
            0 => None,
            1 => Some(("Group", "g1".to_owned())),
            _ => Some(("Patient", rng.pick(patients).clone())),
        };
        out.push(observation(ObservationSpec {
            id: format!("{prefix}ob{i}"),
            subject,
            category: *rng.pick(CATEGORIES),
            code: *rng.pick(OBS_CODES),
            status: if rng.chance(70) { "final" } else { "amended" },
            day: day(rng),
            focus: rng.chance(25).then(|| rng.pick(patients).clone()),
            performer: rng.chance(30).then(|| rng.pick(orgs).clone()),
        }));
    }
    for i in 0..2 + rng.below(4) {
        out.push(condition(&format!("{prefix}cd{i}"), &rng.pick(patients).clone(), *rng.pick(CONDITION_CODES)));
    }
    out
}

/// A clinical scope as the model reads SMART's rules.
#[derive(Debug, Clone)]
struct Scope {
    patient_context: bool,
    rtype: Option<&'static str>,
    constraints: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone)]
struct Principal {
    scope_text: String,
    patient: Option<String>,
    scopes: Vec<Scope>,
}

impl Principal {
    /// Whether some scope lets it search `rtype` at all (the scope check).
    fn may_search(&self, rtype: &str) -> bool {
        self.scopes.iter().any(|s| s.rtype.is_none_or(|t| t == rtype))
    }
    /// Whether it may see `res`.
    fn sees(&self, res: &Res) -> bool {
        self.scopes.iter().any(|s| {
            s.rtype.is_none_or(|t| t == res.rtype)
                && (!s.patient_context || res.patient.is_some() && res.patient == self.patient)
                && s.constraints.iter().all(|(param, value)| res.has_token(param, value))
        })
    }
}

fn principal(rng: &mut Rng, patients: &[String]) -> Principal {
    let who = rng.pick(patients).clone();
    let cat = |rng: &mut Rng| (*rng.pick(CATEGORIES)).to_owned();
    let (text, patient): (String, Option<String>) = match rng.below(9) {
        0 => ("user/*.rs".into(), None),
        1 => ("patient/*.rs".into(), Some(who)),
        2 => (format!("user/Observation.rs?category={} user/Patient.rs", cat(rng)), None),
        3 => {
            let (a, b) = (cat(rng), cat(rng));
            (
                format!(
                    "patient/Observation.rs?category={a} patient/Observation.rs?category={CATEGORY}|{b} patient/Patient.rs"
                ),
                Some(who),
            )
        }
        4 => (format!("user/Observation.rs user/Condition.rs?code={SNOMED}|{}", rng.pick(CONDITION_CODES)), None),
        5 => ("patient/*.rs user/Observation.rs?category=laboratory".into(), Some(who)),
        6 => ("user/Patient.rs user/Condition.rs user/Organization.rs".into(), None),
        7 => (
            "patient/Patient.rs patient/Condition.rs user/Organization.rs system/Observation.rs?status=final".into(),
            Some(who),
        ),
        _ => ("system/*.read".into(), None),
    };
    let scopes = text
        .split_whitespace()
        .map(|scope| {
            let (context, rest) = scope.split_once('/').unwrap();
            let (resource, query) = rest.split_once('?').map_or((rest, None), |(r, q)| (r, Some(q)));
            let rtype = match resource.rsplit_once('.').unwrap().0 {
                "*" => None,
                "Patient" => Some("Patient"),
                "Observation" => Some("Observation"),
                "Condition" => Some("Condition"),
                "Organization" => Some("Organization"),
                other => panic!("{other}"),
            };
            let constraints = query
                .map(|q| {
                    let (name, value) = q.split_once('=').unwrap();
                    vec![(
                        if name == "category" {
                            "category"
                        } else if name == "code" {
                            "code"
                        } else {
                            "status"
                        },
                        value.to_owned(),
                    )]
                })
                .unwrap_or_default();
            Scope { patient_context: context == "patient", rtype, constraints }
        })
        .collect();
    Principal { scope_text: text, patient, scopes }
}

/// A search the model can answer.
#[derive(Debug, Clone)]
struct Search {
    types: Vec<&'static str>,
    filters: Vec<Filter>,
    count: usize,
    sort: Option<&'static str>,
    summary_count: bool,
    total: bool,
    include: Option<(&'static str, &'static str, bool)>,
}

#[derive(Debug, Clone)]
enum Filter {
    Token(&'static str, String),
    Ref(&'static str, String, String),
    Ids(Vec<String>),
    DateGe(String),
    DateLt(String),
    /// `param:Target.<inner>`
    Chain(&'static str, &'static str, Box<Filter>),
    /// `_has:Source:param:<inner>`
    Has(&'static str, &'static str, Box<Filter>),
}

impl Filter {
    fn query(&self) -> (String, String) {
        match self {
            Filter::Token(p, v) => ((*p).to_owned(), v.clone()),
            Filter::Ref(p, t, id) => ((*p).to_owned(), format!("{t}/{id}")),
            Filter::Ids(ids) => ("_id".to_owned(), ids.join(",")),
            Filter::DateGe(d) => ("date".to_owned(), format!("ge{d}")),
            Filter::DateLt(d) => ("date".to_owned(), format!("lt{d}")),
            Filter::Chain(p, t, inner) => {
                let (name, value) = inner.query();
                (format!("{p}:{t}.{name}"), value)
            }
            Filter::Has(source, p, inner) => {
                let (name, value) = inner.query();
                (format!("_has:{source}:{p}:{name}"), value)
            }
        }
    }

    /// The types this filter searches besides its own.
    fn hops(&self, out: &mut Vec<&'static str>) {
        match self {
            Filter::Chain(_, t, inner) | Filter::Has(t, _, inner) => {
                out.push(t);
                inner.hops(out);
            }
            _ => {}
        }
    }

    fn holds(&self, res: &Res, world: &World) -> bool {
        match self {
            Filter::Token(p, v) => res.has_token(p, v),
            Filter::Ref(p, t, id) => res.targets(p).iter().any(|(tt, ii)| tt == t && ii == id),
            Filter::Ids(ids) => ids.contains(&res.id),
            Filter::DateGe(d) => res.day.as_ref().is_some_and(|day| day >= d),
            Filter::DateLt(d) => res.day.as_ref().is_some_and(|day| day < d),
            Filter::Chain(p, t, inner) => res
                .targets(p)
                .iter()
                .any(|(tt, id)| tt == t && world.visible(t).any(|other| other.id == *id && inner.holds(other, world))),
            Filter::Has(source, p, inner) => world.visible(source).any(|other| {
                other.targets(p).iter().any(|(tt, id)| tt == res.rtype && *id == res.id) && inner.holds(other, world)
            }),
        }
    }
}

/// What one principal sees of one data set.
struct World<'a> {
    data: &'a [Res],
    who: &'a Principal,
}

impl World<'_> {
    fn visible<'w>(&'w self, rtype: &'w str) -> impl Iterator<Item = &'w Res> + 'w {
        self.data.iter().filter(move |r| r.rtype == rtype && self.who.sees(r))
    }
    fn find(&self, rtype: &str, id: &str) -> Option<&Res> {
        self.data.iter().find(|r| r.rtype == rtype && r.id == id && self.who.sees(r))
    }
}

fn random_filter(rng: &mut Rng, rtype: &str, patients: &[String], orgs: &[String], depth: usize) -> Filter {
    let patient_filter = |rng: &mut Rng| -> Filter {
        match rng.below(if depth > 0 { 2 } else { 4 }) {
            0 => Filter::Token("gender", (*rng.pick(GENDERS)).to_owned()),
            1 => Filter::Ids(vec![rng.pick(patients).clone()]),
            2 => Filter::Has(
                "Observation",
                "subject",
                Box::new(Filter::Token("code", (*rng.pick(OBS_CODES)).to_owned())),
            ),
            _ => Filter::Has(
                "Condition",
                "subject",
                Box::new(Filter::Token("code", (*rng.pick(CONDITION_CODES)).to_owned())),
            ),
        }
    };
    match rtype {
        "Observation" => match rng.below(10) {
            0 => Filter::Token("code", (*rng.pick(OBS_CODES)).to_owned()),
            1 => Filter::Token("code", format!("{LOINC}|{}", rng.pick(OBS_CODES))),
            2 => Filter::Token("category", (*rng.pick(CATEGORIES)).to_owned()),
            3 => Filter::Token("status", "final".to_owned()),
            4 => Filter::Ref("patient", "Patient".into(), rng.pick(patients).clone()),
            5 => Filter::DateGe(format!("2026-0{}-01", 2 + rng.below(4))),
            6 => Filter::DateLt(format!("2026-0{}-15", 2 + rng.below(4))),
            7 => Filter::Chain("focus", "Patient", Box::new(patient_filter(rng))),
            8 => Filter::Chain("performer", "Organization", Box::new(Filter::Ids(vec![rng.pick(orgs).clone()]))),
            _ => Filter::Chain("subject", "Patient", Box::new(patient_filter(rng))),
        },
        "Condition" => match rng.below(3) {
            0 => Filter::Token("code", (*rng.pick(CONDITION_CODES)).to_owned()),
            1 => Filter::Ref("subject", "Patient".into(), rng.pick(patients).clone()),
            _ => Filter::Chain("subject", "Patient", Box::new(patient_filter(rng))),
        },
        "Patient" => match rng.below(5) {
            0 => Filter::Ref("general-practitioner", "Organization".into(), rng.pick(orgs).clone()),
            1 => Filter::Ids(vec![rng.pick(patients).clone(), rng.pick(patients).clone()]),
            _ => patient_filter(rng),
        },
        _ => Filter::Ids(vec![rng.pick(orgs).clone()]),
    }
}

fn random_search(rng: &mut Rng, patients: &[String], orgs: &[String]) -> Search {
    let types: Vec<&'static str> = match rng.below(9) {
        0 | 1 | 2 => vec!["Observation"],
        3 | 4 => vec!["Patient"],
        5 | 6 => vec!["Condition"],
        7 => vec!["Organization"],
        _ => vec!["Observation", "Patient"],
    };
    let mut filters = Vec::new();
    if types.len() == 1 {
        for _ in 0..rng.below(3) {
            filters.push(random_filter(rng, types[0], patients, orgs, 0));
        }
    } else if rng.chance(50) {
        let mut ids: Vec<String> = (0..3).map(|i| format!("ob{i}")).collect();
        ids.push(rng.pick(patients).clone());
        filters.push(Filter::Ids(ids));
    }
    let include = match (types.as_slice(), rng.below(3)) {
        (["Observation"], 0) => {
            Some(("_include", if rng.chance(70) { "Observation:subject" } else { "Observation:performer" }, false))
        }
        (["Patient"], 0) => {
            Some(("_revinclude", if rng.chance(50) { "Observation:subject" } else { "Condition:subject" }, true))
        }
        (["Patient"], 1) => Some(("_include", "Patient:general-practitioner", false)),
        (["Condition"], 0) => Some(("_include", "Condition:subject", false)),
        (["Organization"], 0) => Some(("_revinclude", "Patient:general-practitioner", true)),
        _ => None,
    };
    let sort = match (types.as_slice(), rng.below(5)) {
        ([_], 0) => Some("_id"),
        ([_], 1) => Some("-_id"),
        (["Observation"], 2) => Some("date"),
        (["Observation"], 3) => Some("-date"),
        _ => None,
    };
    Search {
        types,
        filters,
        count: *rng.pick(&[1, 2, 3, 5, 50]),
        sort,
        summary_count: rng.chance(10),
        total: rng.chance(30),
        include,
    }
}

impl Search {
    fn url(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if self.types.len() > 1 {
            query.append_pair("_type", &self.types.join(","));
        }
        for filter in &self.filters {
            let (name, value) = filter.query();
            query.append_pair(&name, &value);
        }
        query.append_pair("_count", &self.count.to_string());
        if let Some(sort) = self.sort {
            query.append_pair("_sort", sort);
        }
        if self.summary_count {
            query.append_pair("_summary", "count");
        }
        if self.total {
            query.append_pair("_total", "accurate");
        }
        if let Some((name, value, _)) = self.include {
            query.append_pair(name, value);
        }
        let path = if self.types.len() > 1 { String::new() } else { self.types[0].to_owned() };
        format!("{path}?{}", query.finish())
    }

    /// The model's answer: 403 when a searched or reached type is beyond the scopes, else the
    /// visible matches in order.
    fn expected(&self, world: &World) -> Result<Vec<String>, u16> {
        let mut hops = Vec::new();
        self.filters.iter().for_each(|f| f.hops(&mut hops));
        if self.types.iter().chain(&hops).any(|t| !world.who.may_search(t)) {
            return Err(403);
        }
        let mut found: Vec<&Res> = self
            .types
            .iter()
            .flat_map(|t| world.visible(t))
            .filter(|r| self.filters.iter().all(|f| f.holds(r, world)))
            .collect();
        // Type, then id, byte-wise: the order without `_sort`, and every sort's tie-break.
        found.sort_by(|a, b| (a.rtype, a.id.as_bytes()).cmp(&(b.rtype, b.id.as_bytes())));
        match self.sort {
            Some("-_id") => found.reverse(),
            Some("date") => found.sort_by(|a, b| a.day.cmp(&b.day).then(a.id.cmp(&b.id))),
            Some("-date") => found.sort_by(|a, b| b.day.cmp(&a.day).then(a.id.cmp(&b.id))),
            _ => {}
        }
        Ok(found.iter().map(|r| r.key()).collect())
    }

    /// What `_include`/`_revinclude` adds to a page with these matches.
    fn included(&self, page: &[String], world: &World) -> BTreeSet<String> {
        let Some((_, spec, reverse)) = self.include else { return BTreeSet::new() };
        let (source, param) = spec.split_once(':').unwrap();
        let matches: Vec<&Res> = page
            .iter()
            .filter_map(|key| {
                let (t, id) = key.split_once('/').unwrap();
                world.data.iter().find(|r| r.rtype == t && r.id == id)
            })
            .collect();
        let mut out = BTreeSet::new();
        if reverse {
            for other in world.visible(source) {
                if other.targets(param).iter().any(|(t, id)| matches.iter().any(|m| m.rtype == t && m.id == *id)) {
                    out.insert(other.key());
                }
            }
        } else {
            for m in &matches {
                for (t, id) in m.targets(param) {
                    if let Some(target) = world.find(&t, &id) {
                        out.insert(target.key());
                    }
                }
            }
        }
        out.retain(|key| !page.contains(key));
        out
    }
}

/// One page as a client sees it, cursors aside (they are sealed per server).
#[derive(Debug, Clone, PartialEq)]
struct Page {
    status: u16,
    matches: Vec<String>,
    included: BTreeSet<String>,
    total: Option<i64>,
    relations: Vec<String>,
    error: Option<String>,
}

async fn transcript(server: &Server, token: &str, search: &Search) -> Vec<Page> {
    let client = server.client_with(Some(token));
    let mut url = server.url(&search.url());
    let mut pages = Vec::new();
    loop {
        let reply = server.send(client.get(&url)).await;
        let body = reply.json();
        if reply.status != 200 {
            pages.push(Page {
                status: reply.status,
                matches: Vec::new(),
                included: BTreeSet::new(),
                total: None,
                relations: Vec::new(),
                error: body["issue"][0]["diagnostics"].as_str().map(str::to_owned),
            });
            return pages;
        }
        let entries = body["entry"].as_array().cloned().unwrap_or_default();
        let key = |e: &Value| {
            format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap())
        };
        let mut relations: Vec<String> =
            body["link"].as_array().unwrap().iter().map(|l| l["relation"].as_str().unwrap().to_owned()).collect();
        relations.sort();
        let next = body["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
        pages.push(Page {
            status: 200,
            matches: entries.iter().filter(|e| e["search"]["mode"] == "match").map(key).collect(),
            included: entries.iter().filter(|e| e["search"]["mode"] == "include").map(key).collect(),
            total: body["total"].as_i64(),
            relations,
            error: None,
        });
        match next {
            Some(next) if pages.len() < 100 => url = next,
            Some(_) => panic!("more than 100 pages for {}", search.url()),
            None => return pages,
        }
    }
}

/// Checks one transcript against the model; a description of the first difference.
fn check(search: &Search, world: &World, pages: &[Page]) -> Result<(), String> {
    let expected = match search.expected(world) {
        Err(status) => {
            return if pages.len() == 1 && pages[0].status == status {
                Ok(())
            } else {
                Err(format!("expected {status}, got {:?}", pages[0]))
            };
        }
        Ok(expected) => expected,
    };
    if pages[0].status != 200 {
        return Err(format!("expected 200 with {expected:?}, got {:?}", pages[0]));
    }
    if search.summary_count {
        let page = &pages[0];
        return if pages.len() == 1 && page.matches.is_empty() && page.total == Some(expected.len() as i64) {
            Ok(())
        } else {
            Err(format!("_summary=count: expected total {}, got {page:?}", expected.len()))
        };
    }
    let got: Vec<String> = pages.iter().flat_map(|p| p.matches.clone()).collect();
    if got != expected {
        return Err(format!("matches over all pages: expected {expected:?}, got {got:?}"));
    }
    for (n, page) in pages.iter().enumerate() {
        let last = n + 1 == pages.len();
        let size_ok = if last { page.matches.len() <= search.count } else { page.matches.len() == search.count };
        let mut relations = vec!["self".to_owned()];
        if !last {
            relations.push("next".to_owned());
        }
        if n > 0 {
            relations.push("previous".to_owned());
        }
        relations.sort();
        if !size_ok || page.relations != relations {
            return Err(format!(
                "page {n}: {} matches, links {:?} (expected {relations:?})",
                page.matches.len(),
                page.relations
            ));
        }
        let total = search.total.then_some(expected.len() as i64);
        if page.total != total {
            return Err(format!("page {n}: total {:?}, expected {total:?}", page.total));
        }
        let included = search.included(&page.matches, world);
        if page.included != included {
            return Err(format!("page {n}: included {:?}, expected {included:?}", page.included));
        }
    }
    Ok(())
}

async fn load(server: &Server, data: &[Res]) {
    let entries: Vec<Value> =
        data.iter().map(|r| json!({"resource": r.json, "request": {"method": "PUT", "url": r.key()}})).collect();
    server.post("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await.expect(200);
}

async fn run_seed(db: Db, seed: u64) -> Result<usize, String> {
    let mut rng = Rng(seed);
    let patients: Vec<String> = (0..3 + rng.below(2)).map(|i| format!("p{i}")).collect();
    let orgs: Vec<String> = vec!["o0".into(), "o1".into()];
    let mut data: Vec<Res> = orgs.iter().map(|o| organization(o)).collect();
    for p in &patients {
        let gp = rng.chance(60).then(|| rng.pick(&orgs).clone());
        data.push(patient(p, *rng.pick(GENDERS), gp.as_deref()));
    }
    data.extend(data_set(&mut rng, "", &patients, &orgs));
    let who = principal(&mut rng, &patients);

    // The second data set: the same, less some resources the principal cannot see, plus
    // resources it cannot see (other patients, other categories), pointing at anything.
    let mut other: Vec<Res> = data.iter().filter(|r| who.sees(r) || !rng.chance(30)).cloned().collect();
    let hidden_patients: Vec<String> = (0..2).map(|i| format!("hp{i}")).collect();
    let mut everyone = patients.clone();
    everyone.extend(hidden_patients.iter().cloned());
    let mut extras: Vec<Res> = hidden_patients.iter().map(|p| patient(p, *rng.pick(GENDERS), Some(&orgs[0]))).collect();
    extras.push(organization("ho0"));
    extras.extend(data_set(&mut rng, "h", &everyone, &orgs));
    other.extend(extras.into_iter().filter(|r| !who.sees(r)));

    let first = Server::start(db).await;
    let second = Server::start(db).await;
    load(&first, &data).await;
    load(&second, &other).await;
    let token_first = first.token(&who.scope_text, who.patient.as_deref());
    let token_second = second.token(&who.scope_text, who.patient.as_deref());
    let world = World { data: &data, who: &who };
    for n in 0..SEARCHES_PER_SET {
        let search = random_search(&mut rng, &patients, &orgs);
        let a = transcript(&first, &token_first, &search).await;
        let context =
            || format!("seed {seed}, search {n}: {} as {:?} (patient {:?})", search.url(), who.scope_text, who.patient);
        check(&search, &world, &a).map_err(|e| format!("{}: {e}", context()))?;
        let b = transcript(&second, &token_second, &search).await;
        if a != b {
            return Err(format!(
                "{}: the answer changed with resources the token cannot see:\n{a:?}\n{b:?}",
                context()
            ));
        }
    }
    Ok(SEARCHES_PER_SET)
}

async fn searches_see_exactly_what_the_reference_model_allows(db: Db) {
    let base: u64 = std::env::var("HEARTH_DIFFERENTIAL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(22);
    let seeds: Vec<u64> = REGRESSION_SEEDS.iter().copied().chain((0..DATA_SETS).map(|i| base * 1000 + i)).collect();
    let mut searches = 0;
    for seed in seeds {
        match run_seed(db, seed).await {
            Ok(n) => searches += n,
            Err(failure) => {
                panic!("{failure}\n(replay with HEARTH_DIFFERENTIAL_SEED or add the seed to REGRESSION_SEEDS)")
            }
        }
    }
    assert!(searches >= 300, "{searches} searches");
    eprintln!("access differential on {db:?}: {searches} searches, each on two servers, paged to the end");
}
