//! Authentication and authorisation: who is asking (a verified bearer token becomes a
//! [`Principal`]) and what they may do (SMART scopes, patient compartments, admin areas).

use serde_json::{Map, Value};

use crate::fhir::compartment::{data_key_id, patient_key_id};
use crate::fhir::outcome::{FhirError, IssueType};

pub mod scopes;
pub mod token;

use scopes::{Context, Permission, ScopeSet, constraint_holds};

/// The verified identity behind a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: String,
    pub issuer: String,
    pub client_id: Option<String>,
    /// The patient in context (`patient` claim), which `patient/` scopes confine to.
    pub patient: Option<String>,
    pub scopes: ScopeSet,
    /// Roles from the token's `roles` claim (e.g. `break-glass`, `privacy-officer`), which
    /// policy plugins see.
    pub roles: Vec<String>,
}

/// The role that lets a principal override consent denials, with a stated reason.
pub const BREAK_GLASS_ROLE: &str = "break-glass";

/// A FHIR interaction, as far as permissions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Vread,
    Update,
    Delete,
    HistoryInstance,
    Search,
}

impl Interaction {
    fn permission(self) -> Permission {
        match self {
            Interaction::Create => Permission::Create,
            Interaction::Read | Interaction::Vread | Interaction::HistoryInstance => Permission::Read,
            Interaction::Search => Permission::Search,
            Interaction::Update => Permission::Update,
            Interaction::Delete => Permission::Delete,
        }
    }
}

/// What a principal may reach for one interaction on one type: any of these grants.
#[derive(Debug, Clone)]
pub struct Access {
    grants: Vec<Grant>,
}

/// One grant's confinement: a patient compartment and `?param=value` constraints.
#[derive(Debug, Clone, Copy)]
pub struct Restriction<'a> {
    pub patient: Option<&'a str>,
    pub constraints: &'a [(String, String)],
}

#[derive(Debug, Clone)]
struct Grant {
    /// `Some(patient)`: only resources in that patient's compartment.
    patient: Option<String>,
    constraints: Vec<(String, String)>,
}

impl Access {
    /// True when some grant reaches every resource of the type (no compartment, no constraint).
    pub fn is_unrestricted(&self) -> bool {
        self.grants.iter().any(|g| g.patient.is_none() && g.constraints.is_empty())
    }

    /// The one restriction every search must carry, when there is exactly one restricted
    /// grant (a patient compartment and/or `?param=value` constraints); `None` when access is
    /// unrestricted or spread over several grants (then results are filtered one by one).
    pub fn single_restriction(&self) -> Option<Restriction<'_>> {
        match self.grants.as_slice() {
            [grant] if !self.is_unrestricted() => {
                Some(Restriction { patient: grant.patient.as_deref(), constraints: &grant.constraints })
            }
            _ => None,
        }
    }

    /// Whether the resource `res_type/id` with content `resource` is within reach.
    pub fn permits(&self, res_type: &str, id: &str, resource: &Map<String, Value>) -> bool {
        self.grants.iter().any(|grant| {
            let in_compartment = grant
                .patient
                .as_deref()
                .is_none_or(|patient| data_key_id(res_type, id, resource) == patient_key_id(patient));
            in_compartment && grant.constraints.iter().all(|(name, value)| constraint_holds(resource, name, value))
        })
    }
}

impl Principal {
    /// The access this principal's clinical scopes give for `interaction` on `res_type`, or a
    /// 403 saying which scope is missing.
    pub fn access(&self, interaction: Interaction, res_type: &str) -> Result<Access, FhirError> {
        let permission = interaction.permission();
        let mut patient_scope_without_context = false;
        let grants: Vec<Grant> = self
            .scopes
            .clinical
            .iter()
            .filter(|scope| scope.grants(permission, res_type))
            .filter_map(|scope| {
                let patient = match scope.context {
                    Context::Patient => match &self.patient {
                        Some(patient) => Some(patient.clone()),
                        None => {
                            patient_scope_without_context = true;
                            return None;
                        }
                    },
                    Context::User | Context::System => None,
                };
                Some(Grant { patient, constraints: scope.constraints.clone() })
            })
            .collect();
        if grants.is_empty() {
            let message = if patient_scope_without_context {
                "patient/ scopes need a patient in context (the token has no `patient` claim)".to_owned()
            } else {
                format!("the token has no scope allowing {interaction:?} on {res_type}")
            };
            return Err(forbidden(message));
        }
        Ok(Access { grants })
    }

    /// Checks an administrative area (`erasure`, `keys`, ...).
    pub fn require_admin(&self, area: &str) -> Result<(), FhirError> {
        if self.scopes.has_admin(area) {
            Ok(())
        } else {
            Err(forbidden(format!("this operation needs the admin/{area} scope")))
        }
    }
}

pub fn forbidden(message: impl Into<String>) -> FhirError {
    FhirError::new(axum::http::StatusCode::FORBIDDEN, IssueType::Forbidden, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn principal(scope: &str, patient: Option<&str>) -> Principal {
        Principal {
            subject: "s".into(),
            issuer: "i".into(),
            client_id: None,
            patient: patient.map(str::to_owned),
            scopes: ScopeSet::parse(scope),
            roles: Vec::new(),
        }
    }

    #[test]
    fn patient_scopes_confine_to_the_compartment() {
        let p = principal("patient/*.rs", Some("a"));
        let access = p.access(Interaction::Read, "Observation").unwrap();
        assert!(!access.is_unrestricted());
        assert!(access.permits("Observation", "o", &map(json!({"subject": {"reference": "Patient/a"}}))));
        assert!(!access.permits("Observation", "o", &map(json!({"subject": {"reference": "Patient/b"}}))));
        assert!(p.access(Interaction::Read, "Patient").unwrap().permits("Patient", "a", &map(json!({}))));
        assert!(!p.access(Interaction::Read, "Patient").unwrap().permits("Patient", "b", &map(json!({}))));
        assert_eq!(p.access(Interaction::Update, "Patient").unwrap_err().status, 403);
        let no_context = principal("patient/*.rs", None);
        assert!(
            no_context.access(Interaction::Read, "Patient").unwrap_err().diagnostics.contains("patient in context")
        );
    }

    #[test]
    fn user_scopes_and_constraints() {
        let p = principal("user/Observation.rs?category=laboratory user/Patient.r", None);
        let obs = p.access(Interaction::Read, "Observation").unwrap();
        let lab = json!({"category": [{"coding": [{"code": "laboratory"}]}]});
        let vitals = json!({"category": [{"coding": [{"code": "vital-signs"}]}]});
        assert!(obs.permits("Observation", "1", &map(lab.clone())));
        assert!(!obs.permits("Observation", "2", &map(vitals.clone())));
        assert!(p.access(Interaction::Read, "Patient").unwrap().is_unrestricted());
        assert!(p.access(Interaction::Create, "Patient").is_err());
        // The widest grant wins.
        let both = principal("user/Observation.rs?category=laboratory user/Observation.r", None);
        assert!(both.access(Interaction::Read, "Observation").unwrap().permits(
            "Observation",
            "2",
            &map(vitals.clone())
        ));
    }

    #[test]
    fn admin_and_clinical_scopes_are_separate() {
        let clinical = principal("user/*.cruds system/*.cruds", None);
        assert!(clinical.require_admin("erasure").is_err());
        let admin = principal("admin/*", None);
        assert!(admin.require_admin("erasure").is_ok());
        assert!(admin.access(Interaction::Read, "Patient").is_err());
    }
}
