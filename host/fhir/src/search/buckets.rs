//! Blind dates by calendar buckets: a birth date is indexed as keyed tokens of the
//! millennium, century, decade, year, month and day it falls in (as far as it is precise),
//! tagged with its precision; a search range with any prefix becomes the set of buckets that
//! exactly covers the values it matches. The database learns which patients share a bucket,
//! never the date, and every FHIR date prefix works without a false match.
//!
//! Values are compared at day precision (a dateTime counts as its date); each precision's
//! values are matched by the FHIR rules on their own range (`1970` lies within `ge1969`, not
//! within `eq1970-04`).

use time::{Date, Month};

use super::dates::DateRange;
use super::query::Prefix;

const US_PER_DAY: i64 = 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Millennium,
    Century,
    Decade,
    Year,
    Month,
    Day,
}

const LEVELS: [Level; 6] = [Level::Millennium, Level::Century, Level::Decade, Level::Year, Level::Month, Level::Day];

/// The precision of a stored value, and its letter in the tagged form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precision {
    Year,
    Month,
    Day,
}

impl Precision {
    fn tag(self) -> char {
        match self {
            Precision::Year => 'Y',
            Precision::Month => 'M',
            Precision::Day => 'D',
        }
    }

    fn finest(self) -> Level {
        match self {
            Precision::Year => Level::Year,
            Precision::Month => Level::Month,
            Precision::Day => Level::Day,
        }
    }
}

fn label(level: Level, date: Date) -> String {
    let year = date.year();
    match level {
        Level::Millennium => format!("k|{}", year / 1000),
        Level::Century => format!("c|{}", year / 100),
        Level::Decade => format!("z|{}", year / 10),
        Level::Year => format!("y|{year:04}"),
        Level::Month => format!("m|{year:04}-{:02}", u8::from(date.month())),
        Level::Day => format!("d|{year:04}-{:02}-{:02}", u8::from(date.month()), date.day()),
    }
}

/// The tagged forms a stored date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or a dateTime) is indexed
/// as; empty for anything else.
pub fn stored_forms(text: &str) -> Vec<String> {
    let Some((date, precision)) = parse(text) else { return Vec::new() };
    LEVELS
        .iter()
        .filter(|level| **level <= precision.finest())
        .map(|level| format!("{}|{}", precision.tag(), label(*level, date)))
        .collect()
}

fn parse(text: &str) -> Option<(Date, Precision)> {
    let range = super::dates::parse_date_range(text)?;
    let date = day_of(range.lo)?;
    let precision = match text.split('T').next()?.len() {
        4 => Precision::Year,
        7 => Precision::Month,
        _ => Precision::Day,
    };
    Some((date, precision))
}

fn day_of(us: i64) -> Option<Date> {
    let days = us.div_euclid(US_PER_DAY);
    Date::from_julian_day(i32::try_from(days + i64::from(EPOCH_JULIAN)).ok()?).ok()
}

const EPOCH_JULIAN: i32 = 2_440_588; // 1970-01-01

fn start_us(date: Date) -> i64 {
    i64::from(date.to_julian_day() - EPOCH_JULIAN) * US_PER_DAY
}

fn first_day() -> Date {
    Date::from_calendar_date(1, Month::January, 1).expect("valid")
}

fn last_day() -> Date {
    Date::from_calendar_date(9999, Month::December, 31).expect("valid")
}

/// The first day of the unit of `level` (year, month or day) containing `date`.
fn unit_start(date: Date, level: Level) -> Date {
    match level {
        Level::Year => Date::from_calendar_date(date.year(), Month::January, 1).unwrap_or(date),
        Level::Month => Date::from_calendar_date(date.year(), date.month(), 1).unwrap_or(date),
        _ => date,
    }
}

/// The last day of the unit of `level` starting at or containing `date`.
fn unit_end(date: Date, level: Level) -> Date {
    let span_end = |span: i32| {
        let year = date.year() - date.year() % span + span - 1;
        Date::from_calendar_date(year.min(9999), Month::December, 31).unwrap_or(date)
    };
    match level {
        Level::Millennium => span_end(1000),
        Level::Century => span_end(100),
        Level::Decade => span_end(10),
        Level::Year => span_end(1),
        Level::Month => {
            let days = date.month().length(date.year());
            Date::from_calendar_date(date.year(), date.month(), days).unwrap_or(date)
        }
        Level::Day => date,
    }
}

fn aligned(date: Date, level: Level) -> bool {
    let span = match level {
        Level::Millennium => 1000,
        Level::Century => 100,
        Level::Decade => 10,
        Level::Year => 1,
        Level::Month => return date.day() == 1,
        Level::Day => return true,
    };
    date.month() == Month::January && date.day() == 1 && (date.year() % span == 0 || date.year() == 1)
}

/// The buckets (coarsest first, no finer than `finest`) exactly covering [`from`, `to`], whose
/// ends are aligned to `finest`.
fn cover(from: Date, to: Date, finest: Level, out: &mut Vec<String>, tag: char) {
    let mut cursor = from;
    while cursor <= to {
        let Some(level) =
            LEVELS.iter().copied().filter(|l| *l <= finest).find(|l| aligned(cursor, *l) && unit_end(cursor, *l) <= to)
        else {
            return;
        };
        out.push(format!("{tag}|{}", label(level, cursor)));
        let end = unit_end(cursor, level);
        match end.next_day() {
            Some(next) => cursor = next,
            None => return,
        }
    }
}

/// The tagged forms a search `prefix` + `range` matches: every value of every precision whose
/// range meets the FHIR rule for the prefix.
pub fn search_forms(prefix: Prefix, range: DateRange, now_us: i64) -> Vec<String> {
    let mut forms = Vec::new();
    for precision in [Precision::Year, Precision::Month, Precision::Day] {
        for (from, to) in unit_intervals(prefix, range, precision.finest(), now_us) {
            cover(from, to, precision.finest(), &mut forms, precision.tag());
        }
    }
    forms
}

/// The units (years, months or days) matching, as intervals of their first and last days.
fn unit_intervals(prefix: Prefix, range: DateRange, level: Level, now_us: i64) -> Vec<(Date, Date)> {
    let (a, b) = (range.lo, range.hi);
    // The unit containing the instant `us` (clamped to years 1..=9999).
    let unit = |us: i64| -> Date {
        match day_of(us) {
            Some(d) if d < first_day() => first_day(),
            Some(d) if d > last_day() => unit_start(last_day(), level),
            Some(d) => unit_start(d, level),
            None if us < 0 => first_day(),
            None => unit_start(last_day(), level),
        }
    };
    let last_unit = unit_start(last_day(), level);
    let next = |d: Date| unit_end(d, level).next_day().map(|n| unit_start(n, level));
    let prev = |d: Date| d.previous_day().map(|p| unit_start(p, level));
    let unit_lo = |d: Date| start_us(d);
    let unit_hi = |d: Date| start_us(unit_end(d, level)) + US_PER_DAY - 1;
    // First unit starting at or after `us`; last unit ending at or before `us`.
    let ceil = |us: i64| -> Option<Date> {
        let u = unit(us);
        if unit_lo(u) >= us { Some(u) } else { next(u) }
    };
    let floor = |us: i64| -> Option<Date> {
        let u = unit(us);
        if unit_hi(u) <= us { Some(u) } else { prev(u) }
    };
    let interval = |from: Option<Date>, to: Option<Date>| -> Option<(Date, Date)> {
        let (from, to) = (from?, to?);
        (from <= to && unit_hi(to) >= unit_lo(first_day()) && unit_lo(from) <= unit_hi(last_unit))
            .then(|| (from.max(first_day()), unit_end(to.min(last_unit), level)))
    };
    let all_from = Some(first_day());
    let all_to = Some(last_unit);
    let within = interval(ceil(a), floor(b));
    let after_end = interval(Some(unit(b.saturating_add(1))).filter(|u| unit_hi(*u) > b), all_to);
    let before_start = interval(all_from, Some(unit(a.saturating_sub(1))).filter(|u| unit_lo(*u) < a));
    let intervals: Vec<Option<(Date, Date)>> = match prefix {
        Prefix::Eq => vec![within],
        Prefix::Ne => match within {
            Some((from, to)) => vec![interval(all_from, prev(from)), interval(next(unit_start(to, level)), all_to)],
            None => vec![interval(all_from, all_to)],
        },
        Prefix::Gt => vec![after_end],
        Prefix::Lt => vec![before_start],
        Prefix::Ge => vec![within, after_end],
        Prefix::Le => vec![before_start, within],
        Prefix::Sa => vec![interval(ceil(b.saturating_add(1)), all_to)],
        Prefix::Eb => vec![interval(all_from, floor(a.saturating_sub(1)))],
        Prefix::Ap => {
            let margin = ((now_us - a).abs() / 10).max(US_PER_DAY);
            vec![interval(Some(unit(a.saturating_sub(margin))), Some(unit(b.saturating_add(margin))))]
        }
    };
    let mut merged: Vec<(Date, Date)> = Vec::new();
    for (from, to) in intervals.into_iter().flatten() {
        match merged.last_mut() {
            Some(last) if last.1.next_day().is_some_and(|n| n >= from) => last.1 = last.1.max(to),
            _ => merged.push((from, to)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::dates::parse_date_range;

    /// The FHIR rule, on ranges: the reference the buckets must agree with.
    fn rule(prefix: Prefix, value: DateRange, search: DateRange, now: i64) -> bool {
        let (lo, hi, a, b) = (value.lo, value.hi, search.lo, search.hi);
        let within = lo >= a && hi <= b;
        match prefix {
            Prefix::Eq => within,
            Prefix::Ne => !within,
            Prefix::Gt => hi > b,
            Prefix::Lt => lo < a,
            Prefix::Ge => hi > b || within,
            Prefix::Le => lo < a || within,
            Prefix::Sa => lo > b,
            Prefix::Eb => hi < a,
            Prefix::Ap => {
                let margin = ((now - a).abs() / 10).max(US_PER_DAY);
                lo <= b.saturating_add(margin) && hi >= a.saturating_sub(margin)
            }
        }
    }

    const PREFIXES: [Prefix; 9] =
        [Prefix::Eq, Prefix::Ne, Prefix::Gt, Prefix::Lt, Prefix::Ge, Prefix::Le, Prefix::Sa, Prefix::Eb, Prefix::Ap];

    fn agrees(value: &str, search: &str) {
        let now = parse_date_range("2026-12-03").unwrap().lo;
        let stored = stored_forms(value);
        let range = parse_date_range(value).unwrap();
        for prefix in PREFIXES {
            let forms = search_forms(prefix, parse_date_range(search).unwrap(), now);
            let found = stored.iter().any(|f| forms.contains(f));
            assert_eq!(
                found,
                rule(prefix, range, parse_date_range(search).unwrap(), now),
                "{value} {prefix:?}{search}"
            );
        }
    }

    #[test]
    fn buckets_agree_with_the_fhir_rules() {
        for value in
            ["1970", "1970-04", "1970-04-02", "1969-12-31", "1971-01-01", "2000-02-29", "0001-01-01", "9999-12-31"]
        {
            for search in
                ["1970", "1970-04", "1970-04-02", "1970-04-01", "1969", "1971-06-30", "1970-04-02T10:00:00Z", "2000"]
            {
                agrees(value, search);
            }
        }
    }

    #[test]
    fn ranges_cost_few_tokens() {
        let now = parse_date_range("2026-12-03").unwrap().lo;
        let forms = search_forms(Prefix::Ge, parse_date_range("1975-03-15").unwrap(), now);
        assert!(forms.len() < 200, "{}", forms.len());
        assert_eq!(stored_forms("1970-04-02").len(), 6);
        assert_eq!(stored_forms("1970").len(), 4);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::search::dates::parse_date_range;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// For any stored date and search date at any precision, the buckets match exactly
        /// when the FHIR rule on ranges does.
        #[test]
        fn buckets_match_exactly_what_the_rule_matches(
            vy in 1900i32..2030, vm in 1u8..=12, vd in 1u8..=28, vp in 0usize..3,
            sy in 1900i32..2030, sm in 1u8..=12, sd in 1u8..=28, sp in 0usize..3,
        ) {
            let text = |y: i32, m: u8, d: u8, p: usize| match p {
                0 => format!("{y:04}"),
                1 => format!("{y:04}-{m:02}"),
                _ => format!("{y:04}-{m:02}-{d:02}"),
            };
            let (value, search) = (text(vy, vm, vd, vp), text(sy, sm, sd, sp));
            let now = parse_date_range("2026-12-03").unwrap().lo;
            let stored = stored_forms(&value);
            for prefix in tests_prefixes() {
                let forms = search_forms(prefix, parse_date_range(&search).unwrap(), now);
                let found = stored.iter().any(|f| forms.contains(f));
                let (v, s) = (parse_date_range(&value).unwrap(), parse_date_range(&search).unwrap());
                let within = v.lo >= s.lo && v.hi <= s.hi;
                let expected = match prefix {
                    Prefix::Eq => within,
                    Prefix::Ne => !within,
                    Prefix::Gt => v.hi > s.hi,
                    Prefix::Lt => v.lo < s.lo,
                    Prefix::Ge => v.hi > s.hi || within,
                    Prefix::Le => v.lo < s.lo || within,
                    Prefix::Sa => v.lo > s.hi,
                    Prefix::Eb => v.hi < s.lo,
                    Prefix::Ap => {
                        let margin = ((now - s.lo).abs() / 10).max(US_PER_DAY);
                        v.lo <= s.hi + margin && v.hi >= s.lo - margin
                    }
                };
                prop_assert_eq!(found, expected, "{} {:?}{}", value, prefix, search);
            }
        }
    }

    fn tests_prefixes() -> [Prefix; 9] {
        [Prefix::Eq, Prefix::Ne, Prefix::Gt, Prefix::Lt, Prefix::Ge, Prefix::Le, Prefix::Sa, Prefix::Eb, Prefix::Ap]
    }
}
