//! One search parameter's filter, by parameter type: chains and `_has` first, then each kind's
//! values and modifiers (token, string, date, number, quantity, composite, reference).

use super::values::{date_value, number_value, plain_token, quantity_value, split_values};
use super::{Condition, Filter, MAX_ALTERNATIVES, Parser, Part, SearchError, StringMatch, TokenMatch};
use crate::search::extract::{
    blind_component_form, blind_string_search_form, blind_token, blind_token_forms, phonetic_codes,
};
use crate::search::registry::{self, Kind, Param, Storage};
use hearth_crypto::blind_index::{Normalization, normalize};

impl Parser<'_> {
    /// One `name=value` filter on `res_type`. `depth` counts chain/_has levels.
    pub(super) fn filter(&self, res_type: &str, name: &str, value: &str, depth: usize) -> Result<Filter, SearchError> {
        if depth > 2 {
            return Err(SearchError::unsupported("chains and _has are supported up to two levels deep"));
        }
        if let Some(rest) = name.strip_prefix("_has:") {
            return self.has(rest, value, depth);
        }
        // A chain: `subject:Patient.name` or `subject.name`.
        if let Some((head, tail)) = name.split_once('.') {
            let (code, target) = match head.split_once(':') {
                Some((code, target)) => (code, Some(target)),
                None => (head, None),
            };
            let param = self.param(res_type, code)?;
            if param.kind != Kind::Reference {
                return Err(SearchError::invalid(format!(
                    "'{code}' is not a reference parameter, so it cannot be chained"
                )));
            }
            let target = match target {
                Some(t) if crate::resource_types::is_resource_type(t) => t.to_owned(),
                Some(t) => return Err(SearchError::invalid(format!("'{t}' is not a resource type"))),
                None => match param.targets {
                    [only] => (*only).to_owned(),
                    _ => {
                        return Err(SearchError::invalid(format!(
                            "'{code}' may point at several types: name one, e.g. {code}:Patient.{tail}"
                        )));
                    }
                },
            };
            let inner = self.filter(&target, tail, value, depth + 1)?;
            return Ok(Filter::Param {
                param,
                condition: Condition::Chain { target, inner: Box::new(inner) },
                negated: false,
            });
        }
        let (code, modifier) = match name.split_once(':') {
            Some((code, modifier)) => (code, Some(modifier)),
            None => (name, None),
        };
        let param = self.param(res_type, code)?;
        let values = split_values(value);
        if values.is_empty() || values.iter().any(String::is_empty) {
            return Err(SearchError::invalid(format!("'{name}' needs a value")));
        }
        if values.len() > MAX_ALTERNATIVES {
            return Err(SearchError::too_costly(format!("at most {MAX_ALTERNATIVES} values in '{name}'")));
        }
        if modifier == Some("missing") {
            return match value {
                "true" => Ok(Filter::Param { param, condition: Condition::Missing(true), negated: false }),
                "false" => Ok(Filter::Param { param, condition: Condition::Missing(false), negated: false }),
                _ => Err(SearchError::invalid(format!("{name} takes true or false"))),
            };
        }
        let (condition, negated) = match param.kind {
            Kind::Uri if matches!(modifier, Some("above" | "below")) => (uri_condition(modifier, &values), false),
            Kind::Token | Kind::Uri => self.token_condition(res_type, param, modifier, &values)?,
            Kind::String => (self.string_condition(res_type, param, modifier, &values)?, false),
            Kind::Date => self.date_condition(res_type, param, modifier, &values)?,
            Kind::Number if modifier.is_none() => {
                (Condition::Number(values.iter().map(|v| number_value(code, v)).collect::<Result<_, _>>()?), false)
            }
            Kind::Quantity if modifier.is_none() => {
                (Condition::Quantity(values.iter().map(|v| quantity_value(code, v)).collect::<Result<_, _>>()?), false)
            }
            Kind::Composite if modifier.is_none() => (self.composite_condition(res_type, param, &values)?, false),
            Kind::Number | Kind::Quantity | Kind::Composite => {
                return Err(unsupported_modifier(param, modifier));
            }
            Kind::Reference => (self.reference_condition(res_type, param, modifier, &values)?, false),
        };
        Ok(Filter::Param { param, condition, negated })
    }

    /// Token and URI parameters: `[system]|[code]` alternatives, `:not` negates.
    fn token_condition(
        &self,
        res_type: &str,
        param: &'static Param,
        modifier: Option<&str>,
        values: &[String],
    ) -> Result<(Condition, bool), SearchError> {
        let negated = match modifier {
            None => false,
            Some("not") => true,
            Some("of-type") if matches!(param.storage, Storage::Blind(_)) => {
                // type-system|type-code|value
                let tokens = values
                    .iter()
                    .map(|v| match v.splitn(3, '|').collect::<Vec<_>>().as_slice() {
                        [system, code, value] if !system.is_empty() && !code.is_empty() && !value.is_empty() => {
                            Ok(TokenMatch::Blind(blind_token(
                                self.key,
                                res_type,
                                param.code,
                                &format!("O|{system}|{code}|{}", value.trim()),
                            )))
                        }
                        _ => Err(SearchError::invalid(format!(
                            "{}:of-type takes type-system|type-code|value, e.g. \
                             http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345",
                            param.code
                        ))),
                    })
                    .collect::<Result<_, _>>()?;
                return Ok((Condition::Token(tokens), false));
            }
            Some(_) => return Err(unsupported_modifier(param, modifier)),
        };
        let tokens = values.iter().map(|v| self.token(res_type, param, v)).collect::<Result<_, _>>()?;
        Ok((Condition::Token(tokens), negated))
    }

    /// String parameters: starts-with by default (case, accents and punctuation ignored),
    /// `:exact`, and `:contains` on values the index holds in the clear; a blind-indexed one
    /// (identifying data) by its prefix and exact tokens.
    fn string_condition(
        &self,
        res_type: &str,
        param: &'static Param,
        modifier: Option<&str>,
        values: &[String],
    ) -> Result<Condition, SearchError> {
        let blind = |form: &str| StringMatch::Blind(blind_token(self.key, res_type, param.code, form));
        let matches = values
            .iter()
            .map(|v| match (param.storage, modifier) {
                (Storage::Blind(_), None) => Ok(blind(&blind_string_search_form(v, false))),
                (Storage::Blind(_), Some("exact")) => Ok(blind(&blind_string_search_form(v, true))),
                (Storage::BlindPhonetic, None) => match phonetic_codes(v).first() {
                    Some(code) => Ok(blind(&format!("H|{code}"))),
                    None => Err(SearchError::invalid(format!("'{}' needs a name with letters", param.code))),
                },
                (Storage::Plain, None) => Ok(StringMatch::StartsWith(normalize(Normalization::Text, v))),
                (Storage::Plain, Some("exact")) => Ok(StringMatch::AsGiven(v.trim().to_owned())),
                (Storage::Plain, Some("contains")) => Ok(StringMatch::Contains(normalize(Normalization::Text, v))),
                _ => Err(unsupported_modifier(param, modifier)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Condition::String(matches))
    }

    /// Date parameters: prefixed ranges; a blind-indexed one (a birth date) as the calendar
    /// buckets covering what the prefix and range match (`search::buckets`).
    fn date_condition(
        &self,
        res_type: &str,
        param: &'static Param,
        modifier: Option<&str>,
        values: &[String],
    ) -> Result<(Condition, bool), SearchError> {
        let code = param.code;
        if modifier.is_some() {
            return Err(unsupported_modifier(param, modifier));
        }
        let dates = values.iter().map(|v| date_value(code, v)).collect::<Result<Vec<_>, _>>()?;
        if param.storage != Storage::BlindDate {
            return Ok((Condition::Date(dates), false));
        }
        let now = crate::instant::now_us();
        let tokens = dates
            .into_iter()
            .flat_map(|(prefix, range)| crate::search::buckets::search_forms(prefix, range, now))
            .map(|form| TokenMatch::Blind(blind_token(self.key, res_type, param.code, &form)))
            .collect();
        Ok((Condition::Token(tokens), false))
    }

    /// Reference parameters: `Type/id`, an id, or a URL on this server; `:Type` narrows.
    fn reference_condition(
        &self,
        res_type: &str,
        param: &'static Param,
        modifier: Option<&str>,
        values: &[String],
    ) -> Result<Condition, SearchError> {
        if modifier == Some("identifier") {
            // The Reference's logical identifier, held as blind tokens beside the references.
            let tokens = values
                .iter()
                .map(|v| {
                    let form = match v.split_once('|') {
                        Some((system, value)) if !system.is_empty() => format!("J|{system}|{value}"),
                        Some((_, value)) => format!("I|{value}"),
                        None => format!("I|{v}"),
                    };
                    TokenMatch::Blind(blind_token(self.key, res_type, param.code, &form))
                })
                .collect();
            return Ok(Condition::Token(tokens));
        }
        let type_modifier = match modifier {
            None => None,
            Some(t) if crate::resource_types::is_resource_type(t) => Some(t),
            Some(_) => return Err(unsupported_modifier(param, modifier)),
        };
        let references = values.iter().map(|v| self.reference(param, type_modifier, v)).collect::<Result<_, _>>()?;
        Ok(Condition::Reference(references))
    }

    pub(super) fn param(&self, res_type: &str, code: &str) -> Result<&'static Param, SearchError> {
        registry::find(res_type, code).ok_or_else(|| match registry::why_not_supported(res_type, code) {
            Some(reason) => SearchError::unsupported(format!(
                "'{code}' is a FHIR R4 search parameter of {res_type} this server does not support: {reason}"
            )),
            None => SearchError::unsupported(format!(
                "'{code}' is not a search parameter of {res_type} on this server; GET /metadata lists them"
            )),
        })
    }

    /// `_has:Observation:patient:code=1234`
    fn has(&self, rest: &str, value: &str, depth: usize) -> Result<Filter, SearchError> {
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(ref_code), Some(inner_name)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SearchError::invalid("_has takes _has:Type:referenceParameter:parameter=value"));
        };
        if !crate::resource_types::is_resource_type(source) {
            return Err(SearchError::invalid(format!("'{source}' in _has is not a resource type")));
        }
        let ref_param = self.param(source, ref_code)?;
        if ref_param.kind != Kind::Reference {
            return Err(SearchError::invalid(format!("'{ref_code}' in _has is not a reference parameter of {source}")));
        }
        let inner = self.filter(source, inner_name, value, depth + 1)?;
        Ok(Filter::Has { source: source.to_owned(), ref_param, inner: Box::new(inner) })
    }

    fn token(&self, res_type: &str, param: &Param, value: &str) -> Result<TokenMatch, SearchError> {
        let Storage::Blind(normalization) = param.storage else { return Ok(plain_token(value)) };
        let form = match value.split_once('|') {
            Some(("", code)) => format!("N|{}", normalize(normalization, code)),
            Some((system, "")) => format!("Y|{system}"),
            Some((system, code)) => format!("S|{system}|{}", normalize(normalization, code)),
            None => format!("V|{}", normalize(normalization, value)),
        };
        debug_assert!(blind_token_forms(Some("s"), "v", normalization).iter().any(|f| f.starts_with("S|")));
        Ok(TokenMatch::Blind(blind_token(self.key, res_type, param.code, &form)))
    }

    pub(super) fn reference(
        &self,
        param: &Param,
        type_modifier: Option<&str>,
        value: &str,
    ) -> Result<(Option<String>, String), SearchError> {
        let local = value.strip_prefix(self.base_url).map_or(value, |rest| rest.trim_start_matches('/'));
        let (res_type, id) = match local.split('/').collect::<Vec<_>>().as_slice() {
            [id] => (type_modifier.map(str::to_owned), (*id).to_owned()),
            [t, id] => ((Some((*t).to_owned())), (*id).to_owned()),
            [t, id, "_history", _] => ((Some((*t).to_owned())), (*id).to_owned()),
            _ => {
                return Err(SearchError::invalid(format!(
                    "'{}' takes Type/id, an id, or a URL on this server",
                    param.code
                )));
            }
        };
        if !crate::resource::is_valid_id(&id) {
            return Err(SearchError::invalid(format!("'{}' names an invalid resource id", param.code)));
        }
        if let Some(t) = &res_type
            && (!crate::resource_types::is_resource_type(t) || type_modifier.is_some_and(|m| m != t))
        {
            return Err(SearchError::invalid(format!("'{}' names a type that does not fit: {t}", param.code)));
        }
        // A parameter with one target type (e.g. `patient`) implies it.
        let res_type = res_type.or_else(|| match param.targets {
            [only] => Some((*only).to_owned()),
            _ => None,
        });
        Ok((res_type, id))
    }
}

/// `:below` (stored URIs starting with the value) and `:above` (stored URIs the value starts
/// with, at `/` boundaries).
fn uri_condition(modifier: Option<&str>, values: &[String]) -> Condition {
    let matches = values
        .iter()
        .flat_map(|v| {
            if modifier == Some("below") {
                return vec![StringMatch::StartsWith(v.clone())];
            }
            let mut prefixes: Vec<StringMatch> =
                v.match_indices('/').map(|(i, _)| StringMatch::Exact(v[..i].to_owned())).collect();
            prefixes.push(StringMatch::Exact(v.clone()));
            prefixes
        })
        .collect();
    Condition::String(matches)
}

impl Parser<'_> {
    /// A composite's values, `first$second`, each part parsed by its component's type.
    fn composite_condition(
        &self,
        res_type: &str,
        param: &'static Param,
        values: &[String],
    ) -> Result<Condition, SearchError> {
        let [first, second] = param.components else {
            return Err(SearchError::unsupported(format!("'{}' is not supported", param.code)));
        };
        let code = param.code;
        let pairs = values
            .iter()
            .map(|v| {
                let (a, b) = v.split_once('$').ok_or_else(|| {
                    SearchError::invalid(format!(
                        "'{code}' takes {}${} (e.g. http://loinc.org|8480-6$gt140)",
                        first.kind.code(),
                        second.kind.code()
                    ))
                })?;
                let first = match first.kind {
                    Kind::Reference => {
                        let (t, id) = self.reference(param, None, a)?;
                        Part::Reference(t, id)
                    }
                    _ => Part::Token(plain_token(a)),
                };
                let second = match second.kind {
                    Kind::Quantity => Part::Quantity(quantity_value(code, b)?),
                    Kind::Number => Part::Number(number_value(code, b)?),
                    Kind::Date => {
                        let (prefix, range) = date_value(code, b)?;
                        Part::Date(prefix, range)
                    }
                    Kind::Reference => match b.rsplit_once('/') {
                        Some(_) => Part::UnitIs(b.trim_start_matches(self.base_url).trim_start_matches('/').to_owned()),
                        None => Part::UnitEndsWith(format!("/{b}")),
                    },
                    Kind::String => Part::UnitIs(blind_token(self.key, res_type, code, &blind_component_form(b))),
                    _ => match plain_token(b) {
                        TokenMatch::SystemCode(s, c) => Part::UnitIs(format!("{s}|{c}")),
                        TokenMatch::NoSystemCode(c) => Part::UnitIs(format!("|{c}")),
                        TokenMatch::System(s) => Part::UnitStartsWith(format!("{s}|")),
                        TokenMatch::Code(c) | TokenMatch::Blind(c) => Part::UnitEndsWith(format!("|{c}")),
                    },
                };
                Ok((first, second))
            })
            .collect::<Result<_, SearchError>>()?;
        Ok(Condition::Composite(pairs))
    }
}

/// The error for a modifier `param` does not take.
fn unsupported_modifier(param: &Param, modifier: Option<&str>) -> SearchError {
    SearchError::unsupported(format!(
        "the modifier ':{}' is not supported on '{}' ({} parameter{})",
        modifier.unwrap_or(""),
        param.code,
        param.kind.code(),
        if param.is_blind() { ", identifying data indexed for exact match only" } else { "" }
    ))
}
