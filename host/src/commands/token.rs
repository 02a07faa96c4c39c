//! `hearth token issue`: development tokens from the dev issuer key.

use std::path::Path;
use std::time::Duration;

use super::CommandError;
use crate::fhir::resource::is_valid_id;

/// `hearth token issue`: a development token signed by the dev issuer key in the data
/// directory (created if missing). Only servers started with --dev on that data directory
/// accept it.
pub fn issue(
    data_dir: &Path,
    subject: &str,
    scope: &str,
    ttl: &str,
    patient: Option<&str>,
    roles: &[String],
) -> Result<String, CommandError> {
    let ttl = parse_duration(ttl)
        .ok_or_else(|| CommandError::Usage(format!("--ttl must look like 900s, 15m or 1h (got {ttl:?})")))?;
    let key = crate::auth::token::DevSigningKey::load_or_create(&crate::serve::dev_token_key_path(data_dir))
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    if let Some(patient) = patient
        && !is_valid_id(patient)
    {
        return Err(CommandError::Usage("--patient must be a Patient resource id".into()));
    }
    Ok(key.issue(subject, scope, ttl, patient, roles))
}

/// Parses `900s`, `15m`, `1h` or plain seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("900"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), None);
        assert_eq!(parse_duration("m"), None);
    }
}
