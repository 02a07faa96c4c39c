//! FHIR dates as ranges: `2024` covers the whole year, `2024-03-05` the whole day,
//! `2024-03-05T10:00:00Z` one second. Search compares these ranges (see the FHIR search page,
//! "date"), in microseconds since the epoch, both ends inclusive.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub lo: i64,
    pub hi: i64,
}

const US_PER_SEC: i64 = 1_000_000;

/// Parses a FHIR date, dateTime or instant (or a search value of that form) into the range it
/// covers. Times without a zone are taken as UTC. `None` for anything malformed.
pub fn parse_date_range(text: &str) -> Option<DateRange> {
    let (date_part, time_part) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let fields: Vec<&str> = date_part.split('-').collect();
    let number = |s: &str, len: usize| -> Option<i32> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    let year = number(fields.first()?, 4)?;
    if year < 1 {
        return None;
    }
    let month = match fields.get(1) {
        Some(m) => Some(number(m, 2)?),
        None => None,
    };
    let day = match fields.get(2) {
        Some(d) => Some(number(d, 2)?),
        None => None,
    };
    if fields.len() > 3 {
        return None;
    }
    let start_of = |y: i32, m: u8, d: u8| -> Option<i64> {
        let date = Date::from_calendar_date(y, Month::try_from(m).ok()?, d).ok()?;
        Some(date.midnight().assume_utc().unix_timestamp() * US_PER_SEC)
    };
    match (month, day, time_part) {
        (None, None, None) => Some(DateRange { lo: start_of(year, 1, 1)?, hi: start_of(year + 1, 1, 1)? - 1 }),
        (Some(m), None, None) => {
            let m = u8::try_from(m).ok()?;
            let lo = start_of(year, m, 1)?;
            let hi = if m == 12 { start_of(year + 1, 1, 1)? } else { start_of(year, m + 1, 1)? } - 1;
            Some(DateRange { lo, hi })
        }
        (Some(m), Some(d), None) => {
            let lo = start_of(year, u8::try_from(m).ok()?, u8::try_from(d).ok()?)?;
            Some(DateRange { lo, hi: lo + 86_400 * US_PER_SEC - 1 })
        }
        (Some(m), Some(d), Some(time)) => {
            let date =
                Date::from_calendar_date(year, Month::try_from(u8::try_from(m).ok()?).ok()?, u8::try_from(d).ok()?)
                    .ok()?;
            let (clock, offset) = split_zone(time)?;
            let (clock, fraction) = match clock.split_once('.') {
                Some((c, f)) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => (c, Some(f)),
                Some(_) => return None,
                None => (clock, None),
            };
            let parts: Vec<&str> = clock.split(':').collect();
            let two = |s: &str| -> Option<u8> {
                (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
            };
            let (hour, minute) = (two(parts.first()?)?, two(parts.get(1)?)?);
            let second = match parts.get(2) {
                Some(s) => Some(two(s)?),
                None => None,
            };
            if parts.len() > 3 || (fraction.is_some() && second.is_none()) {
                return None;
            }
            let at = PrimitiveDateTime::new(date, Time::from_hms(hour, minute, second.unwrap_or(0)).ok()?);
            let lo_dt: OffsetDateTime = at.assume_offset(offset);
            let mut lo = i64::try_from(lo_dt.unix_timestamp_nanos() / 1000).ok()?;
            let width = match (second, fraction) {
                (None, _) => 60 * US_PER_SEC,
                (Some(_), None) => US_PER_SEC,
                (Some(_), Some(f)) => {
                    let digits = f.len().min(6);
                    let scale = 10_i64.pow(6 - u32::try_from(digits).ok()?);
                    lo += f[..digits].parse::<i64>().ok()? * scale;
                    scale
                }
            };
            Some(DateRange { lo, hi: lo + width - 1 })
        }
        _ => None,
    }
}

/// Splits `10:00:00+02:00` / `10:00:00Z` / `10:00` into the clock and its offset (UTC if none).
fn split_zone(time: &str) -> Option<(&str, UtcOffset)> {
    if let Some(clock) = time.strip_suffix('Z') {
        return Some((clock, UtcOffset::UTC));
    }
    let Some(at) = time.rfind(['+', '-']) else { return Some((time, UtcOffset::UTC)) };
    let (clock, zone) = time.split_at(at);
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let (h, m) = zone[1..].split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    Some((clock, UtcOffset::from_hms(sign * h, sign * m, 0).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> (i64, i64) {
        let r = parse_date_range(text).unwrap_or_else(|| panic!("{text}"));
        (r.lo, r.hi)
    }

    #[test]
    fn partial_dates_cover_their_period() {
        let (lo, hi) = range("2024");
        assert_eq!(lo, 1_704_067_200 * US_PER_SEC);
        assert_eq!(hi + 1, 1_735_689_600 * US_PER_SEC);
        assert_eq!(range("2024-02").1 + 1, range("2024-03").0);
        assert_eq!(range("2024-12").1 + 1, range("2025").0);
        assert_eq!(range("2024-02-29").1 + 1, range("2024-03-01").0);
        assert_eq!(range("2024-03-01T00:00:00Z").0, range("2024-03-01").0);
        assert_eq!(range("2024-03-01T02:00:00+02:00").0, range("2024-03-01").0);
        let (lo, hi) = range("2024-03-01T10:00:00.5Z");
        assert_eq!(hi - lo, 99_999);
        assert_eq!(range("2024-03-01T10:00Z").1 - range("2024-03-01T10:00Z").0, 60 * US_PER_SEC - 1);
    }

    #[test]
    fn malformed_dates_are_refused() {
        for bad in
            ["", "24", "2024-2", "2024-13", "2024-02-30", "2024-01-01T25:00:00Z", "2024-01-01T10", "x2024", "0000"]
        {
            assert_eq!(parse_date_range(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in "\\PC{0,40}") {
            if let Some(range) = parse_date_range(&text) {
                prop_assert!(range.lo <= range.hi);
            }
        }

        /// Partial dates nest: a day lies within its month, which lies within its year, and a
        /// time within its day (so `eq2024` finds everything of 2024, as the prefixes expect).
        #[test]
        fn partial_dates_nest(year in 1u32..9999, month in 1u32..=12, day in 1u32..=28, hour in 0u32..24, minute in 0u32..60) {
            let y = parse_date_range(&format!("{year:04}")).unwrap();
            let m = parse_date_range(&format!("{year:04}-{month:02}")).unwrap();
            let d = parse_date_range(&format!("{year:04}-{month:02}-{day:02}")).unwrap();
            let t = parse_date_range(&format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:00Z")).unwrap();
            prop_assert!(y.lo <= m.lo && m.hi <= y.hi);
            prop_assert!(m.lo <= d.lo && d.hi <= m.hi);
            prop_assert!(d.lo <= t.lo && t.hi <= d.hi);
            prop_assert_eq!(t.hi - t.lo, 999_999);
        }
    }
}
