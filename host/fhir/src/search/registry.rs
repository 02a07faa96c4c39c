//! The search parameters this server supports, as data: one row per (resource type, code),
//! each with its FHIR type, the element paths it indexes and how its values are stored.
//!
//! Paths are dotted element names from the resource root. `name[x]` is a choice element
//! (`effective[x]` matches `effectiveDateTime` and `effectivePeriod`; only the choices whose
//! type fits the parameter type are indexed). `name[field=value]` keeps only elements whose
//! `field` equals `value` (`telecom[system=email]`). Arrays are walked at every step.
//!
//! Adding a parameter is adding a row: extraction, query parsing, the CapabilityStatement and
//! the index fingerprint (which triggers a rebuild of existing rows at start-up) follow.

use hearth_crypto::blind_index::Normalization;

/// The FHIR search parameter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Token,
    Date,
    Reference,
    Number,
    Quantity,
    Uri,
    /// A token and a quantity of the same element: paths are `[base, token, quantity]`, `base`
    /// being `""` for the resource itself.
    CompositeQuantity,
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Token => "token",
            Kind::Date => "date",
            Kind::Reference => "reference",
            Kind::Number => "number",
            Kind::Quantity => "quantity",
            Kind::Uri => "uri",
            Kind::CompositeQuantity => "composite",
        }
    }
}

/// How a parameter's values are kept in the search index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// In the clear: codes, opaque ids, clinical dates, quantities, organisation names.
    Plain,
    /// As HMAC blind-index tokens after this normalisation: exact match only.
    Blind(Normalization),
    /// A date as blind tokens of its year, month and day: equality at one of those precisions.
    BlindDate,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Param {
    /// The resource type, or `"*"` for parameters of every type.
    pub resource: &'static str,
    pub code: &'static str,
    pub kind: Kind,
    pub paths: &'static [&'static str],
    /// Reference parameters: the target types indexed (empty: any).
    pub targets: &'static [&'static str],
    pub storage: Storage,
}

impl Param {
    /// True for parameters answered from `resource_head` rather than the index.
    pub fn is_special(&self) -> bool {
        matches!(self.code, "_id" | "_lastUpdated")
    }

    pub fn is_blind(&self) -> bool {
        !matches!(self.storage, Storage::Plain)
    }

    /// What the CapabilityStatement says of the parameter beyond its type.
    pub fn documentation(&self) -> Option<&'static str> {
        match self.storage {
            Storage::Plain => None,
            Storage::Blind(_) => Some(
                "Identifying data: indexed only as a keyed hash (blind index), so only exact matches of the \
                 normalised value work (no prefix, :contains, :text or sorting). Names and addresses ignore \
                 case, accents and punctuation.",
            ),
            Storage::BlindDate => Some(
                "Identifying data: indexed only as keyed hashes of its year, month and day, so only equality \
                 (no prefix or eq) at year, month or day precision works; no ranges or sorting.",
            ),
        }
    }
}

const fn plain(resource: &'static str, code: &'static str, kind: Kind, paths: &'static [&'static str]) -> Param {
    Param { resource, code, kind, paths, targets: &[], storage: Storage::Plain }
}

const fn reference(
    resource: &'static str,
    code: &'static str,
    paths: &'static [&'static str],
    targets: &'static [&'static str],
) -> Param {
    Param { resource, code, kind: Kind::Reference, paths, targets, storage: Storage::Plain }
}

const fn blind(
    resource: &'static str,
    code: &'static str,
    kind: Kind,
    paths: &'static [&'static str],
    normalization: Normalization,
) -> Param {
    Param { resource, code, kind, paths, targets: &[], storage: Storage::Blind(normalization) }
}

const fn blind_date(resource: &'static str, code: &'static str, paths: &'static [&'static str]) -> Param {
    Param { resource, code, kind: Kind::Date, paths, targets: &[], storage: Storage::BlindDate }
}

use Kind::{CompositeQuantity, Date, Quantity, String as Str, Token, Uri};
use Normalization::{Email, Exact, Phone, Text};

const PATIENT: &[&str] = &["Patient"];

/// Parameters of people (Patient, Practitioner): every identifying element blind-indexed.
macro_rules! person_params {
    ($t:literal) => {
        [
            plain($t, "active", Token, &["active"]),
            blind($t, "address", Str, &["address"], Text),
            blind($t, "address-city", Str, &["address.city"], Text),
            blind($t, "address-country", Str, &["address.country"], Text),
            blind($t, "address-postalcode", Str, &["address.postalCode"], Text),
            blind($t, "address-state", Str, &["address.state"], Text),
            plain($t, "address-use", Token, &["address.use"]),
            blind($t, "email", Token, &["telecom[system=email]"], Email),
            blind($t, "family", Str, &["name.family"], Text),
            plain($t, "gender", Token, &["gender"]),
            blind($t, "given", Str, &["name.given"], Text),
            blind($t, "identifier", Token, &["identifier"], Exact),
            blind($t, "name", Str, &["name"], Text),
            blind($t, "phone", Token, &["telecom[system=phone]"], Phone),
            blind($t, "telecom", Token, &["telecom"], Exact),
        ]
    };
}

const PATIENT_PARAMS: [Param; 15] = person_params!("Patient");
const PRACTITIONER_PARAMS: [Param; 15] = person_params!("Practitioner");

/// Every supported parameter. `_id` and `_lastUpdated` are answered from the resource head.
pub static PARAMS: &[&[Param]] = &[
    &[
        plain("*", "_id", Token, &["id"]),
        plain("*", "_lastUpdated", Date, &["meta.lastUpdated"]),
        plain("*", "_tag", Token, &["meta.tag"]),
        plain("*", "_security", Token, &["meta.security"]),
        plain("*", "_profile", Uri, &["meta.profile"]),
        plain("*", "_source", Uri, &["meta.source"]),
    ],
    &PATIENT_PARAMS,
    &[
        blind_date("Patient", "birthdate", &["birthDate"]),
        blind_date("Patient", "death-date", &["deceased[x]"]),
        plain("Patient", "deceased", Token, &["deceased[x]"]),
        reference("Patient", "general-practitioner", &["generalPractitioner"], &[]),
        plain("Patient", "language", Token, &["communication.language"]),
        reference("Patient", "link", &["link.other"], &[]),
        reference("Patient", "organization", &["managingOrganization"], &[]),
    ],
    &PRACTITIONER_PARAMS,
    &[plain("Practitioner", "communication", Token, &["communication"])],
    &[
        plain("Organization", "active", Token, &["active"]),
        plain("Organization", "address", Str, &["address"]),
        plain("Organization", "address-city", Str, &["address.city"]),
        plain("Organization", "address-country", Str, &["address.country"]),
        plain("Organization", "address-postalcode", Str, &["address.postalCode"]),
        plain("Organization", "address-state", Str, &["address.state"]),
        plain("Organization", "address-use", Token, &["address.use"]),
        reference("Organization", "endpoint", &["endpoint"], &[]),
        plain("Organization", "identifier", Token, &["identifier"]),
        plain("Organization", "name", Str, &["name", "alias"]),
        reference("Organization", "partof", &["partOf"], &[]),
        plain("Organization", "type", Token, &["type"]),
    ],
    &[
        reference("Encounter", "account", &["account"], &[]),
        reference("Encounter", "appointment", &["appointment"], &[]),
        reference("Encounter", "based-on", &["basedOn"], &[]),
        plain("Encounter", "class", Token, &["class"]),
        plain("Encounter", "date", Date, &["period"]),
        reference("Encounter", "diagnosis", &["diagnosis.condition"], &[]),
        reference("Encounter", "episode-of-care", &["episodeOfCare"], &[]),
        blind("Encounter", "identifier", Token, &["identifier"], Exact),
        plain("Encounter", "length", Quantity, &["length"]),
        reference("Encounter", "location", &["location.location"], &[]),
        plain("Encounter", "location-period", Date, &["location.period"]),
        reference("Encounter", "part-of", &["partOf"], &[]),
        reference("Encounter", "participant", &["participant.individual"], &[]),
        plain("Encounter", "participant-type", Token, &["participant.type"]),
        reference("Encounter", "patient", &["subject"], PATIENT),
        reference("Encounter", "practitioner", &["participant.individual"], &["Practitioner"]),
        plain("Encounter", "reason-code", Token, &["reasonCode"]),
        reference("Encounter", "reason-reference", &["reasonReference"], &[]),
        reference("Encounter", "service-provider", &["serviceProvider"], &[]),
        plain("Encounter", "special-arrangement", Token, &["hospitalization.specialArrangement"]),
        plain("Encounter", "status", Token, &["status"]),
        reference("Encounter", "subject", &["subject"], &[]),
        plain("Encounter", "type", Token, &["type"]),
    ],
    &[
        reference("Observation", "based-on", &["basedOn"], &[]),
        plain("Observation", "category", Token, &["category"]),
        plain("Observation", "code", Token, &["code"]),
        plain("Observation", "code-value-quantity", CompositeQuantity, &["", "code", "value[x]"]),
        plain("Observation", "combo-code", Token, &["code", "component.code"]),
        plain("Observation", "combo-code-value-quantity", CompositeQuantity, &["", "code", "value[x]"]),
        plain("Observation", "combo-data-absent-reason", Token, &["dataAbsentReason", "component.dataAbsentReason"]),
        plain("Observation", "combo-value-concept", Token, &["value[x]", "component.value[x]"]),
        plain("Observation", "combo-value-quantity", Quantity, &["value[x]", "component.value[x]"]),
        plain("Observation", "component-code", Token, &["component.code"]),
        plain("Observation", "component-code-value-quantity", CompositeQuantity, &["component", "code", "value[x]"]),
        plain("Observation", "component-data-absent-reason", Token, &["component.dataAbsentReason"]),
        plain("Observation", "component-value-concept", Token, &["component.value[x]"]),
        plain("Observation", "component-value-quantity", Quantity, &["component.value[x]"]),
        plain("Observation", "data-absent-reason", Token, &["dataAbsentReason"]),
        plain("Observation", "date", Date, &["effective[x]"]),
        reference("Observation", "derived-from", &["derivedFrom"], &[]),
        reference("Observation", "device", &["device"], &[]),
        reference("Observation", "encounter", &["encounter"], &[]),
        reference("Observation", "focus", &["focus"], &[]),
        reference("Observation", "has-member", &["hasMember"], &[]),
        blind("Observation", "identifier", Token, &["identifier"], Exact),
        plain("Observation", "method", Token, &["method"]),
        reference("Observation", "part-of", &["partOf"], &[]),
        reference("Observation", "patient", &["subject"], PATIENT),
        reference("Observation", "performer", &["performer"], &[]),
        reference("Observation", "specimen", &["specimen"], &[]),
        plain("Observation", "status", Token, &["status"]),
        reference("Observation", "subject", &["subject"], &[]),
        plain("Observation", "value-concept", Token, &["value[x]"]),
        plain("Observation", "value-date", Date, &["value[x]"]),
        plain("Observation", "value-quantity", Quantity, &["value[x]"]),
        blind("Observation", "value-string", Str, &["value[x]"], Text),
    ],
    &[
        plain("Condition", "abatement-date", Date, &["abatement[x]"]),
        reference("Condition", "asserter", &["asserter"], &[]),
        plain("Condition", "body-site", Token, &["bodySite"]),
        plain("Condition", "category", Token, &["category"]),
        plain("Condition", "clinical-status", Token, &["clinicalStatus"]),
        plain("Condition", "code", Token, &["code"]),
        reference("Condition", "encounter", &["encounter"], &[]),
        plain("Condition", "evidence", Token, &["evidence.code"]),
        reference("Condition", "evidence-detail", &["evidence.detail"], &[]),
        blind("Condition", "identifier", Token, &["identifier"], Exact),
        plain("Condition", "onset-date", Date, &["onset[x]"]),
        reference("Condition", "patient", &["subject"], PATIENT),
        plain("Condition", "recorded-date", Date, &["recordedDate"]),
        plain("Condition", "severity", Token, &["severity"]),
        plain("Condition", "stage", Token, &["stage.summary"]),
        reference("Condition", "subject", &["subject"], &[]),
        plain("Condition", "verification-status", Token, &["verificationStatus"]),
    ],
    &[
        reference("Procedure", "based-on", &["basedOn"], &[]),
        plain("Procedure", "category", Token, &["category"]),
        plain("Procedure", "code", Token, &["code"]),
        plain("Procedure", "date", Date, &["performed[x]"]),
        reference("Procedure", "encounter", &["encounter"], &[]),
        blind("Procedure", "identifier", Token, &["identifier"], Exact),
        plain("Procedure", "instantiates-uri", Uri, &["instantiatesUri"]),
        reference("Procedure", "location", &["location"], &[]),
        reference("Procedure", "part-of", &["partOf"], &[]),
        reference("Procedure", "patient", &["subject"], PATIENT),
        reference("Procedure", "performer", &["performer.actor"], &[]),
        plain("Procedure", "reason-code", Token, &["reasonCode"]),
        reference("Procedure", "reason-reference", &["reasonReference"], &[]),
        plain("Procedure", "status", Token, &["status"]),
        reference("Procedure", "subject", &["subject"], &[]),
    ],
    &[
        plain("MedicationRequest", "authoredon", Date, &["authoredOn"]),
        plain("MedicationRequest", "category", Token, &["category"]),
        plain("MedicationRequest", "code", Token, &["medication[x]"]),
        plain("MedicationRequest", "date", Date, &["dosageInstruction.timing.event"]),
        reference("MedicationRequest", "encounter", &["encounter"], &[]),
        blind("MedicationRequest", "identifier", Token, &["identifier"], Exact),
        reference("MedicationRequest", "intended-dispenser", &["dispenseRequest.performer"], &[]),
        reference("MedicationRequest", "intended-performer", &["performer"], &[]),
        plain("MedicationRequest", "intended-performertype", Token, &["performerType"]),
        plain("MedicationRequest", "intent", Token, &["intent"]),
        reference("MedicationRequest", "medication", &["medication[x]"], &[]),
        reference("MedicationRequest", "patient", &["subject"], PATIENT),
        plain("MedicationRequest", "priority", Token, &["priority"]),
        reference("MedicationRequest", "requester", &["requester"], &[]),
        plain("MedicationRequest", "status", Token, &["status"]),
        reference("MedicationRequest", "subject", &["subject"], &[]),
    ],
    &[
        reference("AllergyIntolerance", "asserter", &["asserter"], &[]),
        plain("AllergyIntolerance", "category", Token, &["category"]),
        plain("AllergyIntolerance", "clinical-status", Token, &["clinicalStatus"]),
        plain("AllergyIntolerance", "code", Token, &["code", "reaction.substance"]),
        plain("AllergyIntolerance", "criticality", Token, &["criticality"]),
        plain("AllergyIntolerance", "date", Date, &["recordedDate"]),
        blind("AllergyIntolerance", "identifier", Token, &["identifier"], Exact),
        plain("AllergyIntolerance", "last-date", Date, &["lastOccurrence"]),
        plain("AllergyIntolerance", "manifestation", Token, &["reaction.manifestation"]),
        plain("AllergyIntolerance", "onset", Date, &["reaction.onset"]),
        reference("AllergyIntolerance", "patient", &["patient"], PATIENT),
        reference("AllergyIntolerance", "recorder", &["recorder"], &[]),
        plain("AllergyIntolerance", "route", Token, &["reaction.exposureRoute"]),
        plain("AllergyIntolerance", "severity", Token, &["reaction.severity"]),
        plain("AllergyIntolerance", "type", Token, &["type"]),
        plain("AllergyIntolerance", "verification-status", Token, &["verificationStatus"]),
    ],
    &[
        plain("Immunization", "date", Date, &["occurrence[x]"]),
        blind("Immunization", "identifier", Token, &["identifier"], Exact),
        reference("Immunization", "location", &["location"], &[]),
        plain("Immunization", "lot-number", Str, &["lotNumber"]),
        reference("Immunization", "manufacturer", &["manufacturer"], &[]),
        reference("Immunization", "patient", &["patient"], PATIENT),
        reference("Immunization", "performer", &["performer.actor"], &[]),
        reference("Immunization", "reaction", &["reaction.detail"], &[]),
        plain("Immunization", "reaction-date", Date, &["reaction.date"]),
        plain("Immunization", "reason-code", Token, &["reasonCode"]),
        reference("Immunization", "reason-reference", &["reasonReference"], &[]),
        plain("Immunization", "series", Str, &["protocolApplied.series"]),
        plain("Immunization", "status", Token, &["status"]),
        plain("Immunization", "status-reason", Token, &["statusReason"]),
        plain("Immunization", "target-disease", Token, &["protocolApplied.targetDisease"]),
        plain("Immunization", "vaccine-code", Token, &["vaccineCode"]),
    ],
    &[
        reference("DiagnosticReport", "based-on", &["basedOn"], &[]),
        plain("DiagnosticReport", "category", Token, &["category"]),
        plain("DiagnosticReport", "code", Token, &["code"]),
        plain("DiagnosticReport", "conclusion", Token, &["conclusionCode"]),
        plain("DiagnosticReport", "date", Date, &["effective[x]"]),
        reference("DiagnosticReport", "encounter", &["encounter"], &[]),
        blind("DiagnosticReport", "identifier", Token, &["identifier"], Exact),
        plain("DiagnosticReport", "issued", Date, &["issued"]),
        reference("DiagnosticReport", "media", &["media.link"], &[]),
        reference("DiagnosticReport", "patient", &["subject"], PATIENT),
        reference("DiagnosticReport", "performer", &["performer"], &[]),
        reference("DiagnosticReport", "result", &["result"], &[]),
        reference("DiagnosticReport", "results-interpreter", &["resultsInterpreter"], &[]),
        reference("DiagnosticReport", "specimen", &["specimen"], &[]),
        plain("DiagnosticReport", "status", Token, &["status"]),
        reference("DiagnosticReport", "subject", &["subject"], &[]),
    ],
    &[
        reference("DocumentReference", "authenticator", &["authenticator"], &[]),
        reference("DocumentReference", "author", &["author"], &[]),
        plain("DocumentReference", "category", Token, &["category"]),
        plain("DocumentReference", "contenttype", Token, &["content.attachment.contentType"]),
        reference("DocumentReference", "custodian", &["custodian"], &[]),
        plain("DocumentReference", "date", Date, &["date"]),
        blind("DocumentReference", "description", Str, &["description"], Text),
        reference("DocumentReference", "encounter", &["context.encounter"], &[]),
        plain("DocumentReference", "event", Token, &["context.event"]),
        plain("DocumentReference", "facility", Token, &["context.facilityType"]),
        plain("DocumentReference", "format", Token, &["content.format"]),
        blind("DocumentReference", "identifier", Token, &["masterIdentifier", "identifier"], Exact),
        plain("DocumentReference", "language", Token, &["content.attachment.language"]),
        plain("DocumentReference", "location", Uri, &["content.attachment.url"]),
        reference("DocumentReference", "patient", &["subject"], PATIENT),
        plain("DocumentReference", "period", Date, &["context.period"]),
        reference("DocumentReference", "related", &["context.related"], &[]),
        reference("DocumentReference", "relatesto", &["relatesTo.target"], &[]),
        plain("DocumentReference", "relation", Token, &["relatesTo.code"]),
        plain("DocumentReference", "security-label", Token, &["securityLabel"]),
        plain("DocumentReference", "setting", Token, &["context.practiceSetting"]),
        plain("DocumentReference", "status", Token, &["status"]),
        reference("DocumentReference", "subject", &["subject"], &[]),
        plain("DocumentReference", "type", Token, &["type"]),
    ],
    &[
        plain("Consent", "action", Token, &["provision.action"]),
        reference("Consent", "actor", &["provision.actor.reference"], &[]),
        plain("Consent", "category", Token, &["category"]),
        reference("Consent", "consentor", &["performer"], &[]),
        reference("Consent", "data", &["provision.data.reference"], &[]),
        plain("Consent", "date", Date, &["dateTime"]),
        blind("Consent", "identifier", Token, &["identifier"], Exact),
        reference("Consent", "organization", &["organization"], &[]),
        reference("Consent", "patient", &["patient"], PATIENT),
        plain("Consent", "period", Date, &["provision.period"]),
        plain("Consent", "purpose", Token, &["provision.purpose"]),
        plain("Consent", "scope", Token, &["scope"]),
        plain("Consent", "security-label", Token, &["provision.securityLabel"]),
        reference("Consent", "source-reference", &["source[x]"], &[]),
        plain("Consent", "status", Token, &["status"]),
    ],
];

/// Every parameter, flattened.
pub fn all() -> impl Iterator<Item = &'static Param> {
    PARAMS.iter().flat_map(|group| group.iter())
}

/// The parameter `code` of `res_type` (its own or one of every type).
pub fn find(res_type: &str, code: &str) -> Option<&'static Param> {
    all().find(|p| p.code == code && (p.resource == res_type || p.resource == "*"))
}

/// The parameters of `res_type`, its own then those of every type.
pub fn of_type(res_type: &str) -> impl Iterator<Item = &'static Param> {
    all().filter(move |p| p.resource == res_type).chain(all().filter(|p| p.resource == "*"))
}

/// Whether the type has parameters of its own (beyond those of every type).
pub fn has_own_params(res_type: &str) -> bool {
    all().any(|p| p.resource == res_type)
}

/// The parameter that places a resource of `res_type` in a patient's compartment, if any.
pub fn patient_param(res_type: &str) -> Option<&'static Param> {
    find(res_type, "patient").filter(|p| p.kind == Kind::Reference)
}

/// A fingerprint of everything that decides index contents; stored with the index so a
/// registry change (a new build) rebuilds it.
pub fn fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    // v2: token parameters no longer index a choice element's string (free text in plain).
    // v3: every resource in a patient compartment has a `_compartment` row.
    hash.update(b"hearth-search-index-v3\n");
    for p in all() {
        hash.update(format!("{}|{}|{:?}|{:?}|{:?}|{:?}\n", p.resource, p.code, p.kind, p.paths, p.targets, p.storage));
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_per_type_and_types_exist() {
        let mut seen = std::collections::HashSet::new();
        for p in all() {
            assert!(seen.insert((p.resource, p.code)), "duplicate {}.{}", p.resource, p.code);
            assert!(p.resource == "*" || crate::resource_types::is_resource_type(p.resource), "{}", p.resource);
            assert!(!p.paths.is_empty());
            if p.kind == Kind::CompositeQuantity {
                assert_eq!(p.paths.len(), 3, "{}", p.code);
            }
        }
        for t in [
            "Patient",
            "Practitioner",
            "Organization",
            "Encounter",
            "Observation",
            "Condition",
            "Procedure",
            "MedicationRequest",
            "AllergyIntolerance",
            "Immunization",
            "DiagnosticReport",
            "DocumentReference",
            "Consent",
        ] {
            assert!(has_own_params(t), "{t}");
        }
        assert_eq!(find("Observation", "_id").map(|p| p.code), Some("_id"));
        assert!(find("Patient", "birthdate").unwrap().is_blind());
        assert!(find("Observation", "birthdate").is_none());
        // AuditEvent is the audit log, searched through its own lookups (audit::lookup).
        assert!(!has_own_params("AuditEvent"));
    }
}
