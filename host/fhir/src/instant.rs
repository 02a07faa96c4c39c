//! Timestamps: stored as microseconds since the Unix epoch (UTC), rendered as FHIR `instant`s
//! and HTTP dates.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The current time in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

/// Renders microseconds since the epoch as a FHIR instant, e.g. `2026-11-27T20:36:43.123456Z`.
pub fn to_fhir_instant(us: i64) -> String {
    let nanos = i128::from(us) * 1_000;
    let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
        return "1970-01-01T00:00:00Z".to_owned();
    };
    // Fixed six fractional digits so instants sort lexically and round-trip exactly.
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// Renders microseconds since the epoch as an HTTP date (`Last-Modified`), second precision.
pub fn to_http_date(us: i64) -> String {
    let secs = u64::try_from(us.max(0) / 1_000_000).unwrap_or(0);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Parses a FHIR `instant` or a full `dateTime` with a time zone (as `_since` takes) into
/// microseconds since the epoch.
pub fn parse_instant(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_at_microsecond_precision() {
        let us = 1_795_000_000_123_456;
        let text = to_fhir_instant(us);
        assert_eq!(text.len(), "2026-11-18T10:13:20.123456Z".len());
        assert!(text.ends_with(".123456Z"), "{text}");
        assert_eq!(parse_instant(&text), Some(us));
    }

    #[test]
    fn parses_offsets_and_rejects_dates_without_time() {
        assert_eq!(parse_instant("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_instant("2026-01-01"), None);
        assert_eq!(parse_instant("not a date"), None);
    }

    #[test]
    fn http_dates_use_imf_fixdate() {
        assert_eq!(to_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
