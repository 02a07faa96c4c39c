//! One search parameter's filter, by parameter type: chains and `_has` first, then each kind's
//! values and modifiers (token, string, date, number, quantity, composite, reference).

use super::values::{date_value, number_value, plain_token, quantity_value, split_prefix, split_values};
use super::{Condition, Filter, MAX_ALTERNATIVES, Parser, Prefix, SearchError, StringMatch, TokenMatch};
use crate::search::dates::parse_date_range;
use crate::search::extract::{blind_date_forms, blind_string_form, blind_token, blind_token_forms};
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
            Kind::Token | Kind::Uri => self.token_condition(res_type, param, modifier, &values)?,
            Kind::String => (self.string_condition(res_type, param, modifier, &values)?, false),
            Kind::Date => self.date_condition(res_type, param, modifier, &values)?,
            Kind::Number if modifier.is_none() => {
                (Condition::Number(values.iter().map(|v| number_value(code, v)).collect::<Result<_, _>>()?), false)
            }
            Kind::Quantity if modifier.is_none() => {
                (Condition::Quantity(values.iter().map(|v| quantity_value(code, v)).collect::<Result<_, _>>()?), false)
            }
            Kind::CompositeQuantity if modifier.is_none() => (composite_condition(code, &values)?, false),
            Kind::Number | Kind::Quantity | Kind::CompositeQuantity => {
                return Err(unsupported_modifier(param, modifier));
            }
            Kind::Reference => (self.reference_condition(param, modifier, &values)?, false),
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
            Some(_) => return Err(unsupported_modifier(param, modifier)),
        };
        let tokens = values.iter().map(|v| self.token(res_type, param, v)).collect::<Result<_, _>>()?;
        Ok((Condition::Token(tokens), negated))
    }

    /// String parameters: starts-with by default, `:exact`, `:contains`; a blind-indexed one
    /// (identifying data) matches exactly only.
    fn string_condition(
        &self,
        res_type: &str,
        param: &'static Param,
        modifier: Option<&str>,
        values: &[String],
    ) -> Result<Condition, SearchError> {
        let matches = values
            .iter()
            .map(|v| match (param.storage, modifier) {
                (Storage::Blind(normalization), None | Some("exact")) => Ok(StringMatch::Blind(blind_token(
                    self.key,
                    res_type,
                    param.code,
                    &blind_string_form(v, normalization),
                ))),
                (Storage::Plain, None) => Ok(StringMatch::StartsWith(normalize(Normalization::Text, v))),
                (Storage::Plain, Some("exact")) => Ok(StringMatch::Exact(normalize(Normalization::Text, v))),
                (Storage::Plain, Some("contains")) => Ok(StringMatch::Contains(normalize(Normalization::Text, v))),
                _ => Err(unsupported_modifier(param, modifier)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Condition::String(matches))
    }

    /// Date parameters: prefixed ranges; a blind-indexed one (a birth date) matches a year,
    /// month or day exactly, or with `ne` alone.
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
        if param.storage != Storage::BlindDate {
            return Ok((Condition::Date(values.iter().map(|v| date_value(code, v)).collect::<Result<_, _>>()?), false));
        }
        let mut negated = false;
        let mut tokens = Vec::new();
        for v in values {
            let (prefix, date) = split_prefix(v);
            match prefix {
                Prefix::Eq => {}
                Prefix::Ne if values.len() == 1 => negated = true,
                _ => {
                    return Err(SearchError::invalid(format!(
                        "'{code}' is identifying data indexed for equality only: give a year, month \
                         or day (e.g. {code}=1970-04-02), without a comparison prefix"
                    )));
                }
            }
            if date.contains('T') || parse_date_range(date).is_none() {
                return Err(SearchError::invalid(format!("'{code}' takes a date (YYYY, YYYY-MM or YYYY-MM-DD)")));
            }
            let form = blind_date_forms(date).pop().unwrap_or_default();
            tokens.push(TokenMatch::Blind(blind_token(self.key, res_type, param.code, &form)));
        }
        Ok((Condition::Token(tokens), negated))
    }

    /// Reference parameters: `Type/id`, an id, or a URL on this server; `:Type` narrows.
    fn reference_condition(
        &self,
        param: &'static Param,
        modifier: Option<&str>,
        values: &[String],
    ) -> Result<Condition, SearchError> {
        let type_modifier = match modifier {
            None => None,
            Some(t) if crate::resource_types::is_resource_type(t) => Some(t),
            Some(_) => return Err(unsupported_modifier(param, modifier)),
        };
        let references = values.iter().map(|v| self.reference(param, type_modifier, v)).collect::<Result<_, _>>()?;
        Ok(Condition::Reference(references))
    }

    pub(super) fn param(&self, res_type: &str, code: &str) -> Result<&'static Param, SearchError> {
        registry::find(res_type, code).ok_or_else(|| {
            SearchError::unsupported(format!(
                "'{code}' is not a search parameter of {res_type} on this server; GET /metadata lists them"
            ))
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

    fn reference(
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

/// A composite of a token and a quantity (`code$quantity`, e.g. `component-code-value-quantity`).
fn composite_condition(code: &str, values: &[String]) -> Result<Condition, SearchError> {
    let pairs = values
        .iter()
        .map(|v| {
            let (token, quantity) = v.split_once('$').ok_or_else(|| {
                SearchError::invalid(format!("'{code}' takes code$quantity, e.g. http://loinc.org|8480-6$gt140"))
            })?;
            Ok((plain_token(token), quantity_value(code, quantity)?))
        })
        .collect::<Result<_, SearchError>>()?;
    Ok(Condition::Composite(pairs))
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
