//! Request parsing shared by the FHIR handlers: content negotiation, the body (with its size
//! limit), and the conditional and `Prefer` headers. Every rejection is an OperationOutcome.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

use super::SharedState;
use crate::fhir::outcome::{FhirError, IssueType};

/// Media types we read and write. `application/json` and `json` are accepted as synonyms of
/// `application/fhir+json`, as the FHIR spec allows.
fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(essence.as_str(), "application/fhir+json" | "application/json" | "json" | "text/json")
}

/// Whether an `Accept` header admits a response of an `application/` media type for which
/// `offered(essence)` holds (wildcards `*/*` and `application/*` admit any).
pub(crate) fn accepts(accept: &str, offered: impl Fn(&str) -> bool) -> bool {
    accept.split(',').any(|item| {
        let essence = item.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        offered(&essence) || matches!(essence.as_str(), "*/*" | "application/*" | "")
    })
}

/// Whether an `Accept` header admits a JSON response.
fn accepts_json(accept: &str) -> bool {
    accepts(accept, is_json_media_type)
}

/// Refuses requests that ask for a format other than JSON (406), via `Accept` or `_format`.
pub async fn negotiate_format(request: Request, next: Next) -> Result<Response, FhirError> {
    let format = request
        .uri()
        .query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(key, _)| key == "_format"))
        .map(|(_, value)| value.into_owned());
    if let Some(format) = format {
        if !is_json_media_type(&format) {
            return Err(not_acceptable());
        }
    } else if let Some(accept) = request.headers().get(header::ACCEPT) {
        let accept = accept.to_str().map_err(|_| not_acceptable())?;
        if !accepts_json(accept) {
            return Err(not_acceptable());
        }
    }
    Ok(next.run(request).await)
}

fn not_acceptable() -> FhirError {
    FhirError::new(
        StatusCode::NOT_ACCEPTABLE,
        IssueType::NotSupported,
        "this server produces application/fhir+json only",
    )
}

/// A FHIR JSON request body: the media type checked (415) and the size limited (413).
pub struct FhirBody(pub Bytes);

impl FromRequest<SharedState> for FhirBody {
    type Rejection = FhirError;

    async fn from_request(request: Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        let limit = state.settings.max_body_bytes;
        match request.headers().get(header::CONTENT_TYPE).map(|v| v.to_str()) {
            Some(Ok(media_type)) if is_json_media_type(media_type) => {}
            Some(_) => {
                return Err(FhirError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    IssueType::NotSupported,
                    "send resources as application/fhir+json (or application/json)",
                ));
            }
            None => {
                return Err(FhirError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    IssueType::NotSupported,
                    "the request has a body but no Content-Type; use application/fhir+json",
                ));
            }
        }
        read_body(request, limit).await.map(FhirBody)
    }
}

/// A request body of any media type, up to `--max-body-bytes` (JSON Patch documents).
pub struct LimitedBody(pub Bytes);

impl FromRequest<SharedState> for LimitedBody {
    type Rejection = FhirError;

    async fn from_request(request: Request, state: &SharedState) -> Result<Self, Self::Rejection> {
        read_body(request, state.settings.max_body_bytes).await.map(LimitedBody)
    }
}

/// A body over the limit is read on, and thrown away, up to this much, so that a client still
/// sending it gets the 413 OperationOutcome instead of a connection reset; past this (or when
/// the declared length is past it) the 413 is sent at once and the connection may be cut.
const DRAIN_LIMIT: u64 = 64 << 20;

/// Reads the body of `request`, at most `limit` bytes: 413 when larger, 408 when the client
/// sends it too slowly (see `server::PacedBody`).
async fn read_body(request: Request, limit: usize) -> Result<Bytes, FhirError> {
    let too_large = || {
        FhirError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueType::TooLong,
            format!("the request body is larger than this server's limit of {limit} bytes"),
        )
    };
    let failed = |error: axum::Error| {
        if crate::server::is_slow_client(&error) {
            FhirError::new(
                StatusCode::REQUEST_TIMEOUT,
                IssueType::Transient,
                "the request body arrived too slowly; send it again without pauses",
            )
        } else {
            FhirError::bad_request(IssueType::Structure, "the request body could not be read")
        }
    };
    let declared_length =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > DRAIN_LIMIT) {
        return Err(too_large());
    }
    let mut body = request.into_body();
    let mut collected: Vec<u8> = Vec::with_capacity(declared_length.map_or(0, |l| l.min(limit as u64) as usize));
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(failed)?;
        let Ok(data) = frame.into_data() else { continue };
        received += data.len() as u64;
        if received > DRAIN_LIMIT {
            return Err(too_large());
        }
        if received <= limit as u64 {
            collected.extend_from_slice(&data);
        }
    }
    if received > limit as u64 { Err(too_large()) } else { Ok(Bytes::from(collected)) }
}

/// Reads and throws away the body of a request refused before its handler ran (401), up to
/// `limit` bytes and under the same pacing bounds as any body, so that a client still sending it
/// gets the answer instead of a connection reset: HTTP/1.1 servers close a connection whose
/// request body was left unread, and a client with an expired token must see its 401 to renew
/// it. Past `limit` (or a declared length past it) it stops, and the connection may be cut.
pub async fn discard_body(request: Request, limit: usize) {
    let declared_length =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    // A client that asked `Expect: 100-continue` has not sent the body and will not until told
    // to: the refusal is its answer (RFC 9110, 10.1.1), and reading would ask for the body.
    let waiting =
        request.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waiting || declared_length.is_some_and(|len| len > limit as u64) {
        return;
    }
    let mut body = request.into_body();
    let mut received: u64 = 0;
    while let Some(Ok(frame)) = body.frame().await {
        received += frame.data_ref().map_or(0, |data| data.len() as u64);
        if received > limit as u64 {
            return;
        }
    }
}

/// Parses a version from an ETag-style header value: `W/"3"`, `"3"` or `3`.
fn parse_version_tag(value: &str) -> Option<i64> {
    let value = value.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    value.parse::<i64>().ok().filter(|v| *v > 0)
}

/// The version demanded by `If-Match`, if the header is present.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, FhirError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(parse_version_tag)
        .map(Some)
        .ok_or_else(|| FhirError::bad_request(IssueType::Value, "If-Match must be a version ETag such as W/\"3\""))
}

/// The version named by `If-None-Match` on a read, if any (`*` matches every version).
pub fn if_none_match_matches(headers: &HeaderMap, current_version: i64) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == "*" || parse_version_tag(tag) == Some(current_version)))
}

/// What the client asked to get back from a write (`Prefer: return=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPreference {
    Representation,
    Minimal,
    OperationOutcome,
}

pub fn return_preference(headers: &HeaderMap) -> ReturnPreference {
    let prefer = headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok());
    for directive in prefer.flat_map(|v| v.split(',')) {
        match directive.trim().strip_prefix("return=").map(str::trim) {
            Some("minimal") => return ReturnPreference::Minimal,
            Some("OperationOutcome") => return ReturnPreference::OperationOutcome,
            Some("representation") => return ReturnPreference::Representation,
            _ => {}
        }
    }
    ReturnPreference::Representation
}

/// `axum::extract::Query` whose rejection is an OperationOutcome (400), not plain text.
pub struct FhirQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for FhirQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = FhirError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, FhirError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| FhirQuery(value))
            .map_err(|rejection| {
                FhirError::bad_request(
                    IssueType::Value,
                    format!("the query parameters are not valid here: {}", rejection.body_text()),
                )
            })
    }
}

/// `axum::extract::Path` whose rejection is an OperationOutcome (400), not plain text.
pub struct FhirPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for FhirPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = FhirError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, FhirError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| FhirPath(value))
            .map_err(|rejection| {
                FhirError::bad_request(
                    IssueType::Value,
                    format!("the URL is not valid here: {}", rejection.body_text()),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn version_tags() {
        assert_eq!(parse_version_tag("W/\"3\""), Some(3));
        assert_eq!(parse_version_tag("\"12\""), Some(12));
        assert_eq!(parse_version_tag("7"), Some(7));
        assert_eq!(parse_version_tag("W/\"x\""), None);
        assert_eq!(parse_version_tag("W/\"0\""), None);
        assert_eq!(parse_version_tag("W/\"-1\""), None);
    }

    #[test]
    fn media_types() {
        assert!(is_json_media_type("application/fhir+json"));
        assert!(is_json_media_type("application/fhir+json; charset=utf-8"));
        assert!(is_json_media_type("Application/JSON"));
        assert!(!is_json_media_type("application/fhir+xml"));
        assert!(!is_json_media_type("text/plain"));
        assert!(accepts_json("application/fhir+xml;q=1, */*;q=0.1"));
        assert!(accepts_json("application/fhir+json"));
        assert!(!accepts_json("application/fhir+xml"));
        assert!(!accepts_json("text/html"));
    }

    #[test]
    fn prefer_return() {
        let mut headers = HeaderMap::new();
        assert_eq!(return_preference(&headers), ReturnPreference::Representation);
        headers.insert("prefer", HeaderValue::from_static("handling=strict, return=minimal"));
        assert_eq!(return_preference(&headers), ReturnPreference::Minimal);
        headers.insert("prefer", HeaderValue::from_static("return=OperationOutcome"));
        assert_eq!(return_preference(&headers), ReturnPreference::OperationOutcome);
    }

    #[test]
    fn if_none_match() {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("W/\"2\""));
        assert!(if_none_match_matches(&headers, 2));
        assert!(!if_none_match_matches(&headers, 3));
    }
}
