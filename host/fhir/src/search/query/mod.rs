//! Parsing a FHIR search request (`GET /Observation?code=...&_count=...`) into a
//! [`SearchQuery`]: filters over the registry's parameters and the result controls.
//!
//! Unknown parameters and unsupported modifiers are errors under `Prefer: handling=strict`
//! and are ignored (and reported in the Bundle) otherwise; a malformed value of a known
//! parameter is always an error, since ignoring it would return a wrong answer.

mod filter;
mod values;

use super::dates::DateRange;
use super::registry::{self, Kind, Param};
use hearth_crypto::blind_index::BlindIndexKey;
pub(crate) use values::date_value;

/// Default and largest page sizes.
pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;
/// At most this many values in one parameter (comma-separated alternatives) and this many
/// filters in one search: bounds on the SQL a request can make the server build.
const MAX_ALTERNATIVES: usize = 100;
const MAX_FILTERS: usize = 40;
/// Parameters (known or not) in one search request at most: each unknown one is reported in
/// the answer, so without a bound a request could make the server write an answer of any size.
pub const MAX_PARAMETERS: usize = 100;
/// `_include` and `_revinclude` parameters in one search at most: each costs a query per level.
pub const MAX_INCLUDES: usize = 10;
/// `_include`/`_revinclude` iterations at most.
pub const MAX_INCLUDE_DEPTH: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// One way a token may match (a `sys`/`val` row condition).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenMatch {
    /// `system|code`
    SystemCode(String, String),
    /// `code` (any system)
    Code(String),
    /// `|code` (no system)
    NoSystemCode(String),
    /// `system|` (any code in the system)
    System(String),
    /// A blind-index token (identifying values).
    Blind(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum StringMatch {
    StartsWith(String),
    /// The normalised value is this.
    Exact(String),
    /// The value as written is this (`:exact` on values held in the clear).
    AsGiven(String),
    Contains(String),
    Blind(String),
}

/// A number with its implied precision: `100` means [99.5, 100.5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumberMatch {
    pub prefix: Prefix,
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantityMatch {
    pub number: NumberMatch,
    pub system: Option<String>,
    pub unit: Option<String>,
}

/// What a composite requires of one component. The first component (a token or reference)
/// is matched on the row's `sys`/`val`, the second on `num`/`unit`/`date_lo`/`date_hi` (see
/// `extract::composite`).
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Token(TokenMatch),
    Reference(Option<String>, String),
    Quantity(QuantityMatch),
    Number(NumberMatch),
    Date(Prefix, DateRange),
    /// The second component's encoded value (`system|code`, `Type/id`, a blind token) is this.
    UnitIs(String),
    UnitStartsWith(String),
    UnitEndsWith(String),
}

/// What a filter requires of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Token(Vec<TokenMatch>),
    String(Vec<StringMatch>),
    Date(Vec<(Prefix, DateRange)>),
    Number(Vec<NumberMatch>),
    Quantity(Vec<QuantityMatch>),
    /// (target type if known, id)
    Reference(Vec<(Option<String>, String)>),
    /// Alternatives of (first component, second component).
    Composite(Vec<(Part, Part)>),
    /// `:missing=true|false`
    Missing(bool),
    /// `param:Type.inner=...`: the reference points at a `Type` matching `inner`.
    Chain {
        target: String,
        inner: Box<Filter>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// A parameter condition; `negated` for `:not` (and `ne` blind dates).
    Param { param: &'static Param, condition: Condition, negated: bool },
    /// `_has:Source:refParam:...`: some `Source` whose `ref_param` points here matches `inner`.
    Has { source: String, ref_param: &'static Param, inner: Box<Filter> },
    /// Matches nothing (e.g. a compartment no resource of the type can be in).
    Nothing,
    /// Only resources sealed under this data key (a patient compartment): the access
    /// predicate's compartment, placed among the filters so that, when it is the most selective,
    /// it drives the query.
    Compartment(String),
}

impl Filter {
    /// The types whose resources this filter searches besides its own (chain targets and
    /// `_has` sources, at every depth): a request must be allowed to search each of them.
    pub fn searched_types(&self, out: &mut Vec<String>) {
        match self {
            Filter::Param { condition: Condition::Chain { target, inner }, .. } => {
                out.push(target.clone());
                inner.searched_types(out);
            }
            Filter::Has { source, inner, .. } => {
                out.push(source.clone());
                inner.searched_types(out);
            }
            Filter::Param { .. } | Filter::Nothing | Filter::Compartment(_) => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKind {
    Id,
    LastUpdated,
    Date,
    Number,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    /// The parameter code (`_id`, `_lastUpdated`, `date`, ...).
    pub code: String,
    pub kind: SortKind,
    pub descending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Accurate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    False,
    True,
    Text,
    Data,
    Count,
}

/// `_include=Source:param[:Target]` or `_revinclude=...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source: String,
    /// `None` for `*` (every reference parameter).
    pub param: Option<&'static Param>,
    pub target: Option<String>,
    pub iterate: bool,
}

#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// The searched types (one for type-level search, several for `/?_type=`).
    pub types: Vec<String>,
    pub filters: Vec<Filter>,
    pub sort: Vec<SortKey>,
    pub count: usize,
    pub total: Total,
    pub summary: Summary,
    pub elements: Option<Vec<String>>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub cursor: Option<String>,
    /// What lenient handling ignored, as messages for the Bundle's OperationOutcome.
    pub ignored: Vec<String>,
    /// The parameters as given, less paging, for `self`/`next`/`prev` links.
    pub link_params: Vec<(String, String)>,
}

/// A search the server refuses: the message names the parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchError {
    pub message: String,
    /// An unknown or unsupported parameter (ignored under lenient handling) rather than a
    /// malformed value.
    pub unsupported: bool,
    /// The search is valid but would cost too much (e.g. too many values).
    pub too_costly: bool,
}

impl SearchError {
    fn invalid(message: impl Into<String>) -> Self {
        SearchError { message: message.into(), unsupported: false, too_costly: false }
    }
    fn unsupported(message: impl Into<String>) -> Self {
        SearchError { message: message.into(), unsupported: true, too_costly: false }
    }
    fn too_costly(message: impl Into<String>) -> Self {
        SearchError { message: message.into(), unsupported: false, too_costly: true }
    }
}

/// Parameters the server reads but does not filter on.
const IGNORED_ALWAYS: &[&str] = &["_format", "_pretty"];

pub struct Parser<'a> {
    pub key: &'a BlindIndexKey,
    /// The server's base URL, stripped from absolute references.
    pub base_url: &'a str,
    pub strict: bool,
}

impl Parser<'_> {
    /// Parses `pairs` for a search over `types` (one type, or several for system search).
    pub fn parse(&self, types: Vec<String>, pairs: &[(String, String)]) -> Result<SearchQuery, SearchError> {
        let mut query = SearchQuery {
            types,
            filters: Vec::new(),
            sort: Vec::new(),
            count: DEFAULT_COUNT,
            total: Total::None,
            summary: Summary::False,
            elements: None,
            includes: Vec::new(),
            revincludes: Vec::new(),
            cursor: None,
            ignored: Vec::new(),
            link_params: Vec::new(),
        };
        if pairs.len() > MAX_PARAMETERS {
            return Err(SearchError::too_costly(format!(
                "a search takes at most {MAX_PARAMETERS} parameters ({} given)",
                pairs.len()
            )));
        }
        for (name, value) in pairs {
            if name != "_cursor" && name != "_type" {
                query.link_params.push((name.clone(), value.clone()));
            }
            match self.apply(&mut query, name, value) {
                Ok(()) => {}
                Err(error) if error.unsupported && !self.strict => {
                    query.ignored.push(error.message);
                    query.link_params.pop();
                }
                Err(error) => return Err(error),
            }
        }
        if query.includes.len() + query.revincludes.len() > MAX_INCLUDES {
            return Err(SearchError::too_costly(format!(
                "a search takes at most {MAX_INCLUDES} _include and _revinclude parameters"
            )));
        }
        if query.filters.len() > MAX_FILTERS {
            return Err(SearchError::too_costly(format!("at most {MAX_FILTERS} search parameters per search")));
        }
        Ok(query)
    }

    fn apply(&self, query: &mut SearchQuery, name: &str, value: &str) -> Result<(), SearchError> {
        match name {
            "_count" => {
                let count: usize = value.parse().map_err(|_| SearchError::invalid("_count must be a whole number"))?;
                if count > MAX_COUNT {
                    if self.strict {
                        return Err(SearchError::too_costly(format!("_count may be at most {MAX_COUNT}")));
                    }
                    query.ignored.push(format!("_count={count} exceeds the maximum page size; {MAX_COUNT} used"));
                }
                query.count = count.min(MAX_COUNT);
            }
            "_sort" => query.sort = self.sort_keys(&query.types, value)?,
            "_total" => {
                query.total = match value {
                    "none" => Total::None,
                    "accurate" | "estimate" => Total::Accurate,
                    _ => return Err(SearchError::invalid("_total must be none, estimate or accurate")),
                }
            }
            "_summary" => {
                query.summary = match value {
                    "false" => Summary::False,
                    "true" => Summary::True,
                    "text" => Summary::Text,
                    "data" => Summary::Data,
                    "count" => {
                        // A count is what _summary=count asks for.
                        query.total = Total::Accurate;
                        Summary::Count
                    }
                    _ => return Err(SearchError::invalid("_summary must be true, false, text, data or count")),
                }
            }
            "_elements" => {
                let elements: Vec<String> =
                    value.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect();
                if elements.iter().any(|e| !e.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')) {
                    return Err(SearchError::invalid("_elements lists element names, e.g. _elements=identifier,name"));
                }
                query.elements = Some(elements);
            }
            "_include" | "_include:iterate" | "_include:recurse" => {
                let include = self.include(query, value, name != "_include", false)?;
                query.includes.push(include);
            }
            "_revinclude" | "_revinclude:iterate" | "_revinclude:recurse" => {
                let include = self.include(query, value, name != "_revinclude", true)?;
                query.revincludes.push(include);
            }
            "_cursor" => query.cursor = Some(value.to_owned()),
            "_type" => {}
            "_contained" | "_containedType" => {
                return Err(SearchError::unsupported(format!("{name} is not supported by this server")));
            }
            n if IGNORED_ALWAYS.contains(&n) => {}
            _ => {
                if query.types.len() != 1 {
                    // System search: only the parameters of every type.
                    let param = name.split([':', '.']).next().unwrap_or(name);
                    if registry::find("Resource", param).is_none() {
                        return Err(SearchError::unsupported(format!(
                            "'{name}' cannot be used when searching several types; only _id, _lastUpdated, _tag, \
                             _security, _profile and _source can"
                        )));
                    }
                }
                let res_type = query.types[0].clone();
                let filter = self.filter(&res_type, name, value, 0)?;
                query.filters.push(filter);
            }
        }
        Ok(())
    }

    /// A scope constraint (`patient/Observation.rs?category=laboratory`) as a filter on
    /// `res_type`: only `name=value` on a token or reference parameter the index holds, without
    /// modifiers, chains or `_has`, so the SQL and `access::Reach::admits` agree on it. `None`
    /// when the constraint is anything else: the grant it belongs to then grants nothing.
    pub fn constraint(&self, res_type: &str, name: &str, value: &str) -> Option<Filter> {
        if name.contains([':', '.']) {
            return None;
        }
        match self.filter(res_type, name, value, 0).ok()? {
            filter @ Filter::Param {
                param,
                condition: Condition::Token(_) | Condition::Reference(_),
                negated: false,
            } if !param.is_special() => Some(filter),
            _ => None,
        }
    }

    fn sort_keys(&self, types: &[String], value: &str) -> Result<Vec<SortKey>, SearchError> {
        let mut keys = Vec::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (descending, code) = match item.strip_prefix('-') {
                Some(code) => (true, code),
                None => (false, item),
            };
            let kind = match code {
                "_id" => SortKind::Id,
                "_lastUpdated" => SortKind::LastUpdated,
                _ => {
                    let res_type = types.first().map_or("Resource", String::as_str);
                    let param = self.param(if types.len() == 1 { res_type } else { "Resource" }, code)?;
                    if param.is_blind() {
                        return Err(SearchError::invalid(format!(
                            "cannot sort by '{code}': it is identifying data the database holds only as keyed hashes"
                        )));
                    }
                    match param.kind {
                        Kind::Date => SortKind::Date,
                        Kind::Number | Kind::Quantity => SortKind::Number,
                        Kind::Token | Kind::String | Kind::Uri | Kind::Reference => SortKind::Text,
                        Kind::Composite => {
                            return Err(SearchError::invalid(format!("cannot sort by the composite '{code}'")));
                        }
                    }
                }
            };
            if keys.iter().any(|k: &SortKey| k.code == code) {
                return Err(SearchError::invalid(format!("_sort names '{code}' twice")));
            }
            keys.push(SortKey { code: code.to_owned(), kind, descending });
        }
        if keys.len() > 4 {
            return Err(SearchError::too_costly("_sort takes at most 4 keys"));
        }
        Ok(keys)
    }

    fn include(&self, query: &SearchQuery, value: &str, iterate: bool, reverse: bool) -> Result<Include, SearchError> {
        let name = if reverse { "_revinclude" } else { "_include" };
        if value == "*" {
            return Err(SearchError::unsupported(format!("{name}=* is not supported; name Type:parameter")));
        }
        let parts: Vec<&str> = value.split(':').collect();
        let (source, code, target) = match parts.as_slice() {
            [source, code] => (*source, *code, None),
            [source, code, target] => (*source, *code, Some((*target).to_owned())),
            _ => return Err(SearchError::invalid(format!("{name} takes Type:parameter[:TargetType]"))),
        };
        if !crate::resource_types::is_resource_type(source) {
            return Err(SearchError::invalid(format!("'{source}' in {name} is not a resource type")));
        }
        if !reverse && !iterate && !query.types.iter().any(|t| t == source) {
            return Err(SearchError::invalid(format!(
                "_include={value} names {source}, which is not a searched type (use _include:iterate)"
            )));
        }
        if let Some(t) = &target
            && !crate::resource_types::is_resource_type(t)
        {
            return Err(SearchError::invalid(format!("'{t}' in {name} is not a resource type")));
        }
        let param = if code == "*" {
            None
        } else {
            let param = self.param(source, code)?;
            if param.kind != Kind::Reference {
                return Err(SearchError::invalid(format!("'{code}' in {name} is not a reference parameter")));
            }
            Some(param)
        };
        Ok(Include { source: source.to_owned(), param, target, iterate })
    }
}

#[cfg(test)]
mod tests {
    use super::values::{number_value, split_values};
    use super::*;
    use hearth_crypto::SecretKey;

    fn parse(res_type: &str, query: &str, strict: bool) -> Result<SearchQuery, SearchError> {
        let key = BlindIndexKey::new(SecretKey::generate());
        let parser = Parser { key: &key, base_url: "https://h/fhir", strict };
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        parser.parse(vec![res_type.to_owned()], &pairs)
    }

    #[test]
    fn values_prefixes_and_modifiers() {
        let q = parse(
            "Observation",
            "code=http://loinc.org|8867-4,1234&date=ge2024-01&value-quantity=lt5.5||mg&status:not=final",
            true,
        )
        .unwrap();
        assert_eq!(q.filters.len(), 4);
        let Filter::Param { condition: Condition::Token(codes), .. } = &q.filters[0] else { panic!() };
        assert_eq!(codes[0], TokenMatch::SystemCode("http://loinc.org".into(), "8867-4".into()));
        assert_eq!(codes[1], TokenMatch::Code("1234".into()));
        let Filter::Param { condition: Condition::Date(dates), .. } = &q.filters[1] else { panic!() };
        assert_eq!(dates[0].0, Prefix::Ge);
        let Filter::Param { condition: Condition::Quantity(q5), .. } = &q.filters[2] else { panic!() };
        assert_eq!((q5[0].number.prefix, q5[0].number.value, q5[0].unit.as_deref()), (Prefix::Lt, 5.5, Some("mg")));
        assert!(matches!(q.filters[3], Filter::Param { negated: true, .. }));
    }

    #[test]
    fn numbers_carry_their_precision() {
        let n = number_value("x", "100").unwrap();
        assert_eq!((n.lo, n.hi), (99.5, 100.5));
        let n = number_value("x", "1.50").unwrap();
        assert!((n.hi - n.lo - 0.01).abs() < 1e-12);
        assert!(number_value("x", "1;DROP").is_err());
    }

    #[test]
    fn chains_and_has() {
        let q = parse("Observation", "subject:Patient.identifier=urn:mrn|7&patient.birthdate=1970", true).unwrap();
        assert!(
            matches!(&q.filters[0], Filter::Param { condition: Condition::Chain { target, .. }, .. } if target == "Patient")
        );
        let q = parse("Patient", "_has:Observation:patient:code=8867-4", true).unwrap();
        assert!(matches!(&q.filters[0], Filter::Has { source, .. } if source == "Observation"));
        assert!(parse("Observation", "subject.name=x", true).unwrap_err().message.contains("several types"));
    }

    #[test]
    fn strict_and_lenient_handling() {
        let error = parse("Patient", "nonsense=1", true).unwrap_err();
        assert!(error.unsupported && error.message.contains("nonsense"));
        let q = parse("Patient", "nonsense=1&gender=female", false).unwrap();
        assert_eq!(q.filters.len(), 1);
        assert_eq!(q.ignored.len(), 1);
        assert_eq!(q.link_params, [("gender".to_owned(), "female".to_owned())]);
        assert!(!parse("Patient", "gender:contains=f", false).unwrap().ignored.is_empty());
        // A malformed value is an error even when lenient.
        assert!(parse("Observation", "date=yesterday", false).is_err());
        assert!(parse("Patient", "birthdate=gt1970", true).is_ok(), "every prefix on blind dates");
        assert!(parse("Patient", "family:contains=ab", true).unwrap_err().message.contains("contains"));
        let near = parse("Location", "near=42.25|-83.69|10|km", true).unwrap_err();
        assert!(near.unsupported && near.message.contains("geographic"), "{near:?}");
        let error = parse("CarePlan", "patient=f001&nonsense=1", true).unwrap_err();
        assert!(error.unsupported && error.message.contains("nonsense"));
        assert!(parse("Patient", "_sort=family", true).unwrap_err().message.contains("keyed hashes"));
        assert!(parse("Patient", "_count=5000", true).unwrap_err().too_costly);
        assert_eq!(parse("Patient", "_count=5000", false).unwrap().count, MAX_COUNT);
    }

    #[test]
    fn requests_are_bounded() {
        let many: String = (0..=MAX_PARAMETERS).map(|i| format!("x{i}=1&")).collect();
        let error = parse("Patient", &many, false).unwrap_err();
        assert!(error.too_costly && error.message.contains("at most"), "{error:?}");
        let includes: String = (0..=MAX_INCLUDES).map(|_| "_include=Observation:subject&").collect();
        assert!(parse("Observation", &includes, false).unwrap_err().too_costly);
        assert!(parse("Observation", "_include=Observation:subject&_revinclude=Observation:subject", false).is_ok());
    }

    #[test]
    fn escaped_commas_stay_in_the_value() {
        assert_eq!(split_values(r"a\,b,c"), ["a,b", "c"]);
        assert_eq!(split_values("x"), ["x"]);
        assert_eq!(split_values("a\\"), ["a\\"], "a trailing backslash is literal");
    }

    #[test]
    fn includes() {
        let q = parse("Observation", "_include=Observation:subject&_revinclude=Provenance:target", true).unwrap();
        assert_eq!(q.revincludes[0].source, "Provenance");
        assert!(
            parse("Observation", "_revinclude=Provenance:nonsense", true).unwrap_err().message.contains("nonsense")
        );
        let q =
            parse("Observation", "_include=Observation:subject:Patient&_revinclude:iterate=Condition:subject", true)
                .unwrap();
        assert_eq!(q.includes[0].target.as_deref(), Some("Patient"));
        assert!(q.revincludes[0].iterate);
        assert!(parse("Observation", "_include=Patient:organization", true).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use hearth_crypto::SecretKey;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever a client sends, parsing answers (a query or an error) and never panics.
        #[test]
        fn parsing_never_panics(
            pairs in proptest::collection::vec(("[_a-z:.\\-]{0,24}", "\\PC{0,40}"), 0..6),
            strict in any::<bool>(),
            res_type in prop::sample::select(vec!["Patient", "Observation", "Encounter", "Basic"]),
        ) {
            let key = BlindIndexKey::new(SecretKey::generate());
            let parser = Parser { key: &key, base_url: "https://h/fhir", strict };
            let owned: Vec<(String, String)> = pairs.into_iter().collect();
            let _ = parser.parse(vec![res_type.to_owned()], &owned);
        }

        /// Known parameters with arbitrary values: still an answer, and a malformed value is
        /// never silently ignored.
        #[test]
        fn values_of_known_parameters_are_parsed_or_refused(
            name in prop::sample::select(vec!["date", "value-quantity", "code", "subject", "identifier", "code-value-quantity", "_count", "_sort", "_include"]),
            value in "\\PC{0,30}",
        ) {
            let key = BlindIndexKey::new(SecretKey::generate());
            let parser = Parser { key: &key, base_url: "https://h/fhir", strict: false };
            if let Err(error) = parser.parse(vec!["Observation".to_owned()], &[(name.to_owned(), value)]) {
                prop_assert!(!error.message.is_empty());
            }
        }
    }
}
