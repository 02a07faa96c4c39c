//! Search values by type: comma-separated alternatives, prefixes, tokens, dates, numbers
//! (with their implicit precision) and quantities.

use super::{NumberMatch, Prefix, QuantityMatch, SearchError, TokenMatch};
use crate::search::dates::{DateRange, parse_date_range};

/// Splits comma-separated alternatives, honouring `\,` escapes.
pub(super) fn split_values(value: &str) -> Vec<String> {
    let mut values = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ (',' | '$' | '|' | '\\')) => values.last_mut().map(|v| v.push(next)).unwrap_or(()),
                Some(other) => {
                    if let Some(v) = values.last_mut() {
                        v.push('\\');
                        v.push(other);
                    }
                }
                None => {
                    if let Some(v) = values.last_mut() {
                        v.push('\\');
                    }
                }
            },
            ',' => values.push(String::new()),
            other => {
                if let Some(v) = values.last_mut() {
                    v.push(other);
                }
            }
        }
    }
    values
}

pub(super) fn plain_token(value: &str) -> TokenMatch {
    match value.split_once('|') {
        Some(("", code)) => TokenMatch::NoSystemCode(code.to_owned()),
        Some((system, "")) => TokenMatch::System(system.to_owned()),
        Some((system, code)) => TokenMatch::SystemCode(system.to_owned(), code.to_owned()),
        None => TokenMatch::Code(value.to_owned()),
    }
}

pub(super) fn split_prefix(value: &str) -> (Prefix, &str) {
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in prefixes {
        if let Some(rest) = value.strip_prefix(text) {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, value)
}

pub(crate) fn date_value(code: &str, value: &str) -> Result<(Prefix, DateRange), SearchError> {
    let (prefix, text) = split_prefix(value);
    let range = parse_date_range(text).ok_or_else(|| {
        SearchError::invalid(format!(
            "'{code}' takes a date such as 2024, 2024-03, 2024-03-05 or 2024-03-05T10:00:00Z, optionally after a \
             prefix (eq, ne, gt, lt, ge, le, sa, eb, ap)"
        ))
    })?;
    Ok((prefix, range))
}

pub(super) fn number_value(code: &str, value: &str) -> Result<NumberMatch, SearchError> {
    let (prefix, text) = split_prefix(value);
    let invalid = || SearchError::invalid(format!("'{code}' takes a number, optionally after a prefix (e.g. gt5.4)"));
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')) {
        return Err(invalid());
    }
    let number: f64 = text.parse().map_err(|_| invalid())?;
    if !number.is_finite() {
        return Err(invalid());
    }
    // Implicit precision: half a unit of the last given digit.
    let half = if text.contains(['e', 'E']) {
        0.0
    } else {
        let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
        0.5 * 10f64.powi(-i32::try_from(decimals).unwrap_or(0))
    };
    Ok(NumberMatch { prefix, value: number, lo: number - half, hi: number + half })
}

pub(super) fn quantity_value(code: &str, value: &str) -> Result<QuantityMatch, SearchError> {
    let mut parts = value.splitn(3, '|');
    let number = number_value(code, parts.next().unwrap_or(""))?;
    let system = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let unit = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
    Ok(QuantityMatch { number, system, unit })
}
