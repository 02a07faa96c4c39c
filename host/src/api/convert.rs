//! `POST /$convert?plugin=NAME`: an inbound message (e.g. an HL7 v2 ADT or ORU with
//! `Content-Type: application/hl7-v2`) goes through an integration plugin's `convert`; the
//! resources it yields are checked like any create (scopes, policies, validation) and stored
//! together in one transaction, or not at all. Answers a `transaction-response` Bundle.

use std::sync::atomic::Ordering;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::SharedState;
use super::fhir::store_error;
use super::gate::{authorize_write, caller};
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

pub async fn convert(
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
        let access = principal.access(Interaction::Create, res_type)?;
        if !access.permits(res_type, id, resource.fields()) {
            return Err(forbidden(format!("this token may not create the {res_type} the message converts to")));
        }
        if let Some(plan) = state.plugins.policies.plan(res_type, PolicyInteraction::Create)
            && let Err(response) = authorize_write(
                &state,
                &caller,
                &plan,
                PolicyInteraction::Create,
                res_type,
                Some(id),
                Some(resource.fields()),
            )
            .await
        {
            return Ok(response);
        }
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
    let written = state.store.create_all(&items).await.map_err(store_error)?;
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
    Ok(super::fhir::fhir_json(StatusCode::OK, serde_json::to_vec(&bundle).unwrap_or_default()))
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
