//! Authentication and authorisation: who is asking (a verified bearer token becomes a
//! [`Principal`]) and what they may do (SMART scopes, patient compartments, admin areas).

use crate::crypto::blind_index::BlindIndexKey;
use crate::fhir::compartment::patient_key_id;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::fhir::search::access::{Grant, Reach, Visibility};
use crate::fhir::search::query::{Filter, Parser};
use crate::store::SubscriptionOwner;

pub mod scopes;
pub mod token;

use scopes::{Context, Permission, ScopeSet};

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
    pub fn permission(self) -> Permission {
        match self {
            Interaction::Create => Permission::Create,
            Interaction::Read | Interaction::Vread | Interaction::HistoryInstance => Permission::Read,
            Interaction::Search => Permission::Search,
            Interaction::Update => Permission::Update,
            Interaction::Delete => Permission::Delete,
        }
    }
}

impl Principal {
    /// The scope check: 403 (saying which scope is missing) unless some clinical scope grants
    /// `interaction` on `res_type`. It depends on the token alone, never on stored data; what
    /// the token reaches within the type is [`Principal::predicate`]'s.
    pub fn check(&self, interaction: Interaction, res_type: &str) -> Result<(), FhirError> {
        let permission = interaction.permission();
        let mut patient_scope_without_context = false;
        for scope in self.scopes.clinical.iter().filter(|s| s.grants(permission, res_type)) {
            if scope.context == Context::Patient && self.patient.is_none() {
                patient_scope_without_context = true;
            } else {
                return Ok(());
            }
        }
        let message = if patient_scope_without_context {
            "patient/ scopes need a patient in context (the token has no `patient` claim)".to_owned()
        } else {
            format!("the token has no scope allowing {interaction:?} on {res_type}")
        };
        Err(forbidden(message))
    }

    /// Whether some scope reaches every resource of `res_type` for `interaction` (a `user/` or
    /// `system/` scope without constraints): what bulk export asks of its exporters.
    pub fn reaches_all(&self, interaction: Interaction, res_type: &str) -> bool {
        self.scopes.clinical.iter().any(|scope| {
            scope.grants(interaction.permission(), res_type)
                && scope.context != Context::Patient
                && scope.constraints.is_empty()
        })
    }

    /// The access predicate of this principal for `interaction`: per type, what its scopes
    /// reach (see [`AccessPredicate`]). Scope constraints are parsed as search parameters of
    /// each type with `key` (blind-indexed parameters need it).
    pub fn predicate(&self, interaction: Interaction, key: &BlindIndexKey, base_url: &str) -> AccessPredicate {
        let permission = interaction.permission();
        let grants = self
            .scopes
            .clinical
            .iter()
            .filter(|scope| scope.permissions.contains(permission.letter()))
            .filter_map(|scope| {
                let compartment = match scope.context {
                    // No patient in context: the scope reaches nothing.
                    Context::Patient => Some(patient_key_id(self.patient.as_deref()?)),
                    Context::User | Context::System => None,
                };
                Some(ScopeGrant {
                    res_type: scope.resource_type.clone(),
                    compartment,
                    constraints: scope.constraints.clone(),
                })
            })
            .collect();
        AccessPredicate { grants, key: key.clone(), base_url: base_url.to_owned() }
    }

    /// What a Subscription this principal writes acts as.
    pub fn as_owner(&self) -> SubscriptionOwner {
        SubscriptionOwner {
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            client_id: self.client_id.clone(),
            patient: self.patient.clone(),
            scopes: self.scopes.granted.join(" "),
        }
    }

    /// The principal a Subscription acts as (no roles: it never breaks the glass).
    pub fn of_owner(owner: &SubscriptionOwner) -> Principal {
        Principal {
            subject: owner.subject.clone(),
            issuer: owner.issuer.clone(),
            client_id: owner.client_id.clone(),
            patient: owner.patient.clone(),
            scopes: ScopeSet::parse(&owner.scopes),
            roles: Vec::new(),
        }
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

/// What one principal's scopes reach for one permission, type by type: the access predicate
/// the store compiles into every query of the request (see `fhir::search::access`).
///
/// A `patient/` scope reaches its patient's compartment (the resources sealed under the
/// patient's data key); a `user/` or `system/` scope reaches every resource of its types; each
/// scope's `?param=value` constraints must all hold, as search parameters of the type. A
/// constraint that is not a token or reference parameter of the type makes its scope grant
/// nothing there (fail closed).
#[derive(Clone)]
pub struct AccessPredicate {
    grants: Vec<ScopeGrant>,
    key: BlindIndexKey,
    base_url: String,
}

#[derive(Debug, Clone)]
struct ScopeGrant {
    /// `None` for `*`.
    res_type: Option<String>,
    compartment: Option<String>,
    constraints: Vec<(String, String)>,
}

impl Visibility for AccessPredicate {
    fn reach(&self, res_type: &str) -> Reach {
        let parser = Parser { key: &self.key, base_url: &self.base_url, strict: true };
        let mut grants = Vec::new();
        for scope in self.grants.iter().filter(|g| g.res_type.as_deref().is_none_or(|t| t == res_type)) {
            let filters: Option<Vec<Filter>> =
                scope.constraints.iter().map(|(name, value)| parser.constraint(res_type, name, value)).collect();
            let Some(filters) = filters else { continue };
            if scope.compartment.is_none() && filters.is_empty() {
                return Reach::All;
            }
            let grant = Grant { compartment: scope.compartment.clone(), filters };
            if !grants.contains(&grant) {
                grants.push(grant);
            }
        }
        if grants.is_empty() { Reach::Nothing } else { Reach::Grants(grants) }
    }
}

impl std::fmt::Debug for AccessPredicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessPredicate").field("grants", &self.grants).finish_non_exhaustive()
    }
}

pub fn forbidden(message: impl Into<String>) -> FhirError {
    FhirError::new(axum::http::StatusCode::FORBIDDEN, IssueType::Forbidden, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::fhir::search::extract::index_entries;
    use serde_json::{Value, json};

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

    /// Whether `reach` admits `resource` (of `res_type`, id `id`, in compartment `key`).
    fn admits(
        key: &BlindIndexKey,
        reach: &Reach,
        res_type: &str,
        id: &str,
        compartment: &str,
        resource: Value,
    ) -> bool {
        let entries = index_entries(res_type, resource.as_object().unwrap(), key);
        reach.admits(id, Some(compartment), &entries)
    }

    #[test]
    fn patient_scopes_confine_to_the_compartment() {
        let key = BlindIndexKey::new(SecretKey::generate());
        let p = principal("patient/*.rs", Some("a"));
        let reach = p.predicate(Interaction::Read, &key, "https://h").reach("Observation");
        assert_eq!(reach, Reach::Grants(vec![Grant { compartment: Some("patient/a".into()), filters: Vec::new() }]));
        assert!(admits(&key, &reach, "Observation", "o", "patient/a", json!({})));
        assert!(!admits(&key, &reach, "Observation", "o", "patient/b", json!({})));
        assert!(p.check(Interaction::Read, "Patient").is_ok());
        assert_eq!(p.check(Interaction::Update, "Patient").unwrap_err().status, 403);
        assert!(p.predicate(Interaction::Update, &key, "https://h").reach("Patient").is_nothing());
        let no_context = principal("patient/*.rs", None);
        assert!(no_context.check(Interaction::Read, "Patient").unwrap_err().diagnostics.contains("patient in context"));
        assert!(no_context.predicate(Interaction::Read, &key, "https://h").reach("Patient").is_nothing());
    }

    #[test]
    fn user_scopes_and_constraints() {
        let key = BlindIndexKey::new(SecretKey::generate());
        let p = principal("user/Observation.rs?category=laboratory user/Patient.r", None);
        let obs = p.predicate(Interaction::Read, &key, "https://h").reach("Observation");
        let lab = json!({"category": [{"coding": [{"system": "http://c", "code": "laboratory"}]}]});
        let vitals = json!({"category": [{"coding": [{"code": "vital-signs"}]}]});
        assert!(admits(&key, &obs, "Observation", "1", "patient/x", lab.clone()));
        assert!(!admits(&key, &obs, "Observation", "2", "patient/x", vitals.clone()));
        assert!(p.predicate(Interaction::Read, &key, "https://h").reach("Patient").is_all());
        assert!(p.check(Interaction::Create, "Patient").is_err());
        // The widest grant wins.
        let both = principal("user/Observation.rs?category=laboratory user/Observation.r", None);
        assert!(both.predicate(Interaction::Read, &key, "https://h").reach("Observation").is_all());
        // A constraint that is not a token or reference parameter of the type grants nothing.
        for scope in
            ["user/Observation.rs?nonsense=1", "user/Observation.rs?date=2020", "user/Observation.rs?code:not=x"]
        {
            let reach = principal(scope, None).predicate(Interaction::Read, &key, "https://h").reach("Observation");
            assert!(reach.is_nothing(), "{scope}");
        }
    }

    #[test]
    fn admin_and_clinical_scopes_are_separate() {
        let clinical = principal("user/*.cruds system/*.cruds", None);
        assert!(clinical.require_admin("erasure").is_err());
        let admin = principal("admin/*", None);
        assert!(admin.require_admin("erasure").is_ok());
        assert!(admin.check(Interaction::Read, "Patient").is_err());
    }
}
