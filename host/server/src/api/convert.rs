//! `POST /$convert?plugin=NAME`: an inbound message (e.g. an HL7 v2 ADT or ORU with
//! `Content-Type: application/hl7-v2`) goes through an integration plugin's `convert`; the
//! resources it yields are checked like any create (scopes, policies, validation) and stored
//! together in one transaction, or not at all. Answers a `transaction-response` Bundle.

use std::sync::atomic::Ordering;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::SharedState;
use super::gate::caller;
use super::gate::requester;
use crate::auth::{Interaction, Principal, forbidden};
use crate::fhir::etag;
use crate::fhir::instant::to_fhir_instant;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::fhir::resource::IncomingResource;
use crate::plugins::World;
use crate::policy::PolicyInteraction;
use crate::store::NewResource;

/// Most resources one message may turn into.
const MAX_RESOURCES: usize = 1_000;

fn unprocessable(message: impl Into<String>) -> FhirError {
    FhirError::new(StatusCode::UNPROCESSABLE_ENTITY, IssueType::Invalid, message)
}

/// The media type of HL7 v2 (ER7) messages and acknowledgements.
const HL7_V2: &str = "application/hl7-v2";

/// Whether the sender asks for an HL7 v2 acknowledgement instead of a Bundle.
fn wants_hl7_ack(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("hl7-v2"))
}

/// Content negotiation of `$convert`: an HL7 v2 acknowledgement, or FHIR JSON as everywhere.
pub async fn negotiate_format(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, FhirError> {
    if wants_hl7_ack(request.headers()) {
        Ok(next.run(request).await)
    } else {
        super::extract::negotiate_format(request, next).await
    }
}

/// `POST /$convert`: with `Accept: application/hl7-v2`, the answer is an HL7 v2 ACK: `AA`
/// when every resource was stored (MSA-3 names them), `AR` when the message was refused
/// (malformed request, no permission, unknown converter; do not resend unchanged), `AE` when
/// it could not be processed (the converter or validation failed, or the server is briefly
/// unavailable: 503). The HTTP status is the same as for a FHIR client.
pub async fn convert(
    state: State<SharedState>,
    principal: Extension<Principal>,
    query: RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !wants_hl7_ack(&headers) {
        return convert_fhir(state, principal, query, headers, body.clone()).await.into_response();
    }
    let message = body.clone();
    let answer = convert_fhir(state, principal, query, headers, body).await;
    let (status, code, text) = match answer {
        Ok(response) if response.status().is_success() => {
            let bundle = axum::body::to_bytes(response.into_body(), 16 << 20).await.unwrap_or_default();
            let bundle: Value = serde_json::from_slice(&bundle).unwrap_or_default();
            let stored: Vec<&str> = bundle["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["response"]["location"].as_str())
                .map(|l| l.split("/_history").next().unwrap_or(l))
                .collect();
            (StatusCode::OK, "AA", format!("stored {}", stored.join(" ")))
        }
        Ok(response) => {
            let status = response.status();
            let outcome = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
            let outcome: Value = serde_json::from_slice(&outcome).unwrap_or_default();
            let text = outcome["issue"][0]["diagnostics"].as_str().unwrap_or("refused").to_owned();
            (status, "AR", text)
        }
        Err(error) => {
            let code = match error.status.as_u16() {
                422 | 500..=599 => "AE",
                _ => "AR",
            };
            (error.status, code, error.diagnostics)
        }
    };
    let ack = hl7_ack(&message, code, &text);
    let mut response = (status, ack).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_static(HL7_V2));
    response
}

/// Escapes text for an HL7 v2 field with the standard delimiters.
fn hl7_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// An ACK for `message`: its MSH with sender and receiver swapped, then MSA (and ERR when not
/// accepted). Works from whatever MSH fields the message has; none is required.
pub fn hl7_ack(message: &[u8], code: &str, text: &str) -> String {
    let message = String::from_utf8_lossy(message);
    let msh = message.split(['\r', '\n']).find(|s| s.starts_with("MSH")).unwrap_or("");
    let separator = msh.chars().nth(3).filter(|c| !c.is_alphanumeric()).unwrap_or('|');
    let fields: Vec<&str> = msh.split(separator).collect();
    // fields[0] = "MSH", fields[1] = MSH-2 (encoding characters), fields[n] = MSH-(n+1).
    let field = |n: usize| fields.get(n - 1).copied().unwrap_or("");
    let trigger = field(9).split('^').nth(1).unwrap_or("");
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let control = uuid::Uuid::new_v4().simple().to_string()[..20].to_owned();
    let version = if field(12).is_empty() { "2.5.1" } else { field(12) };
    let mut ack = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{stamp}||ACK^{trigger}^ACK|{control}|{}|{version}\r",
        field(5),
        field(6),
        field(3),
        field(4),
        if field(11).is_empty() { "P" } else { field(11) },
    );
    ack.push_str(&format!("MSA|{code}|{}|{}\r", field(10), hl7_escape(&text.chars().take(400).collect::<String>())));
    if code != "AA" {
        ack.push_str(&format!("ERR||||E|||{}\r", hl7_escape(text)));
    }
    ack
}

async fn convert_fhir(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, FhirError> {
    let name = form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
        .find(|(key, _)| key == "plugin")
        .map(|(_, value)| value.into_owned())
        .ok_or_else(|| FhirError::bad_request(IssueType::Required, "name the converter: POST /$convert?plugin=NAME"))?;
    // The converter's output is stored as creates: a token without any create scope (say,
    // `openid` alone) has no business running an integration plugin.
    if !principal.scopes.clinical.iter().any(|scope| scope.permissions.contains('c')) {
        return Err(forbidden(
            "$convert stores what it converts: the token needs a create scope on the types the converter produces \
             (e.g. user/Patient.c user/Observation.c)",
        ));
    }
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            FhirError::bad_request(IssueType::Required, "send the message's Content-Type, e.g. application/hl7-v2")
        })?
        .to_owned();
    let plugin = state
        .plugins
        .registry
        .get(&name)
        .filter(|p| p.compiled.manifest.world == World::Integration)
        .ok_or_else(|| FhirError::not_found(format!("no integration plugin named {name} is loaded")))?;
    if !plugin.enabled.load(Ordering::Acquire) {
        return Err(FhirError::new(StatusCode::CONFLICT, IssueType::Conflict, format!("plugin {name} is disabled")));
    }
    let config = state
        .plugins
        .policies
        .bindings()
        .bindings
        .iter()
        .find(|b| b.plugin == name)
        .map_or_else(|| "{}".to_owned(), |b| b.config.clone());
    let runtime = state.plugins.registry.runtime.clone();
    let call_plugin = plugin.clone();
    let outcome =
        tokio::task::spawn_blocking(move || runtime.convert(&call_plugin.compiled, &body, &media_type, &config))
            .await
            .map_err(|_| FhirError::internal())?;
    let converted = match outcome {
        Ok(Ok(resources)) => resources,
        Ok(Err(reason)) => return Err(unprocessable(format!("{name} could not convert the message: {reason}"))),
        Err(failure) => {
            plugin.stats.record_failure(matches!(failure, crate::plugins::CallFailure::Timeout(_)));
            tracing::error!(plugin = name, kind = failure.kind(), %failure, "converter failed");
            return Err(unprocessable(format!("the converter {name} failed; the failure is logged")));
        }
    };
    if converted.is_empty() || converted.len() > MAX_RESOURCES {
        return Err(unprocessable(format!(
            "{name} produced {} resources (1 to {MAX_RESOURCES} expected)",
            converted.len()
        )));
    }

    // Parse, assign ids, and point references by identifier at resources of the same message.
    let mut values = Vec::with_capacity(converted.len());
    for (index, text) in converted.iter().enumerate() {
        let value: Value = serde_json::from_str(text)
            .map_err(|_| unprocessable(format!("{name} produced invalid JSON (resource {})", index + 1)))?;
        let res_type = value.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
        values.push((res_type, uuid::Uuid::new_v4().to_string(), value));
    }
    let identified: Vec<(Value, String, String)> = values
        .iter()
        .flat_map(|(res_type, id, value)| {
            value
                .get("identifier")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(move |identifier| (identifier.clone(), res_type.clone(), id.clone()))
        })
        .collect();
    for (_, _, value) in &mut values {
        if let Some(object) = value.as_object_mut() {
            resolve_identifier_references(object, &identified);
        }
    }

    let caller = caller(&principal, &headers)?;
    let mut incoming = Vec::with_capacity(values.len());
    for (res_type, id, value) in &values {
        let bytes = serde_json::to_vec(value).map_err(|_| FhirError::internal())?;
        let resource = IncomingResource::parse(&bytes, res_type)
            .map_err(|e| unprocessable(format!("{name} produced an invalid {res_type}: {}", e.diagnostics)))?;
        state
            .records
            .guard_write(
                requester(&principal, &caller),
                Interaction::Create,
                res_type,
                id,
                Some(resource.fields()),
                true,
                None,
            )
            .await
            .map_err(|error| {
                if error.status == StatusCode::FORBIDDEN && error.decided_by.is_none() {
                    forbidden(format!("this token may not create the {res_type} the message converts to"))
                } else {
                    error
                }
            })?;
        let key_id = resource.data_key_id(id);
        let events = state.plugins.policies.integrations_for(res_type, PolicyInteraction::Create);
        incoming.push((resource, key_id, events));
    }
    let stamps: Vec<_> = values
        .iter()
        .zip(&incoming)
        .map(|((_, id, _), (resource, _, _))| move |version, at| resource.stamped(id, version, at))
        .collect();
    let items: Vec<NewResource> = values
        .iter()
        .zip(&incoming)
        .zip(&stamps)
        .map(|(((res_type, id, _), (_, key_id, events)), stamp)| NewResource { res_type, id, key_id, events, stamp })
        .collect();
    let written = state.store.create_all(&items).await?;
    if incoming.iter().any(|(_, _, events)| !events.is_empty()) {
        state.plugins.delivery_wake.notify_one();
    }
    tracing::info!(plugin = name, resources = written.len(), "message converted and stored");

    let base = &state.settings.base_url;
    let entries: Vec<Value> = values
        .iter()
        .zip(&written)
        .map(|((res_type, id, _), written)| {
            json!({
                "fullUrl": format!("{base}/{res_type}/{id}"),
                "response": {
                    "status": "201 Created",
                    "location": format!("{res_type}/{id}/_history/{}", written.version),
                    "etag": etag(written.version),
                    "lastModified": to_fhir_instant(written.last_updated_us),
                },
            })
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entries});
    Ok(super::reply::fhir_json(StatusCode::OK, serde_json::to_vec(&bundle).unwrap_or_default()))
}

/// Rewrites `{"identifier": X}` references (anywhere in `object`) whose identifier matches a
/// resource of the same message to also carry `"reference": "Type/id"`.
fn resolve_identifier_references(object: &mut Map<String, Value>, identified: &[(Value, String, String)]) {
    for value in object.values_mut() {
        match value {
            Value::Object(child) => {
                let target = child.get("identifier").filter(|_| !child.contains_key("reference")).and_then(|wanted| {
                    identified.iter().find(|(identifier, _, _)| {
                        identifier.get("system") == wanted.get("system")
                            && identifier.get("value") == wanted.get("value")
                    })
                });
                if let Some((_, res_type, id)) = target {
                    child.insert("reference".into(), Value::String(format!("{res_type}/{id}")));
                } else {
                    resolve_identifier_references(child, identified);
                }
            }
            Value::Array(items) => {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    resolve_identifier_references(item, identified);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_answer_the_message_they_acknowledge() {
        let message = b"MSH|^~\\&|LAB|HOSP|HEARTH|CLINIC|202611270930||ORU^R01|MSG0001|P|2.5.1\rPID|1\r";
        let ack = hl7_ack(message, "AA", "stored Patient/1");
        let segments: Vec<&str> = ack.split('\r').filter(|s| !s.is_empty()).collect();
        let msh: Vec<&str> = segments[0].split('|').collect();
        assert_eq!(&msh[..6], ["MSH", "^~\\&", "HEARTH", "CLINIC", "LAB", "HOSP"], "{ack}");
        assert_eq!((msh[8], msh[10], msh[11]), ("ACK^R01^ACK", "P", "2.5.1"), "{ack}");
        assert_eq!(segments[1], "MSA|AA|MSG0001|stored Patient/1");
        assert_eq!(segments.len(), 2);
        let nak = hl7_ack(message, "AE", "bad | value ^ here");
        assert!(nak.contains("MSA|AE|MSG0001|bad \\F\\ value \\S\\ here\r"), "{nak}");
        assert!(nak.contains("\rERR||||E|||bad \\F\\ value"), "{nak}");
        // No MSH at all: still a well-formed rejection.
        let bare = hl7_ack(b"hello", "AR", "no MSH");
        assert!(bare.starts_with("MSH|^~\\&|") && bare.contains("\rMSA|AR||no MSH\r"), "{bare}");
    }
}
