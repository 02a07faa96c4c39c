//! FHIR JSON answers: a body with its status and the FHIR media type.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::fhir::FHIR_JSON;

/// `body` (FHIR JSON) with `status`.
pub(super) fn fhir_json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}
