//! SMART App Launch scopes, v2 (`patient/Observation.rs?category=laboratory`) and v1
//! (`patient/*.read`), plus Hearth's administrative scopes (`admin/erasure`, `admin/*`).
//!
//! Clinical scopes grant FHIR data access only; admin scopes grant administrative operations
//! only. Neither implies the other.

/// Whose data a clinical scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Only the token's patient compartment.
    Patient,
    /// Whatever the user may see.
    User,
    /// A backend service.
    System,
}

/// A SMART v2 permission letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    pub fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }
}

/// One clinical scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClinicalScope {
    pub context: Context,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    /// The granted letters among `cruds`.
    pub permissions: String,
    /// `?name=value` constraints (v2 only); all must hold.
    pub constraints: Vec<(String, String)>,
}

impl ClinicalScope {
    pub fn grants(&self, permission: Permission, resource_type: &str) -> bool {
        self.permissions.contains(permission.letter())
            && self.resource_type.as_deref().is_none_or(|t| t == resource_type)
    }
}

/// Every scope a token carries, parsed; unknown scopes (`openid`, `launch`, ...) are kept
/// aside and grant nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    pub clinical: Vec<ClinicalScope>,
    /// Administrative areas granted (`erasure`, `keys`, `audit`, `plugins`, or `*`).
    pub admin: Vec<String>,
    pub other: Vec<String>,
    /// Every scope as granted, in order (what policy plugins see).
    pub granted: Vec<String>,
}

impl ScopeSet {
    pub fn parse(scopes: &str) -> ScopeSet {
        let mut set = ScopeSet::default();
        for scope in scopes.split_whitespace() {
            set.granted.push(scope.to_owned());
            if let Some(area) = scope.strip_prefix("admin/").filter(|area| !area.is_empty()) {
                set.admin.push(area.to_owned());
            } else if let Some(clinical) = parse_clinical(scope) {
                set.clinical.push(clinical);
            } else {
                set.other.push(scope.to_owned());
            }
        }
        set
    }

    pub fn has_admin(&self, area: &str) -> bool {
        self.admin.iter().any(|a| a == area || a == "*")
    }
}

/// Parses one clinical scope, or `None` if it is not one.
pub fn parse_clinical(scope: &str) -> Option<ClinicalScope> {
    let (context, rest) = scope.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    let (resource_and_perms, query) = match rest.split_once('?') {
        Some((left, query)) => (left, Some(query)),
        None => (rest, None),
    };
    let (resource, perms) = resource_and_perms.rsplit_once('.')?;
    let resource_type = match resource {
        "*" => None,
        t if crate::fhir::resource_types::is_resource_type(t) => Some(t.to_owned()),
        _ => return None,
    };
    let permissions = match perms {
        // SMART v1.
        "read" => "rs".to_owned(),
        "write" => "cud".to_owned(),
        "*" => "cruds".to_owned(),
        // SMART v2: a non-empty subsequence of "cruds", in that order.
        letters => {
            let mut order = "cruds".chars();
            if letters.is_empty() || !letters.chars().all(|c| order.by_ref().any(|o| o == c)) {
                return None;
            }
            letters.to_owned()
        }
    };
    let mut constraints = Vec::new();
    if let Some(query) = query {
        if matches!(perms, "read" | "write" | "*") {
            return None; // v1 scopes take no constraints
        }
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if name.is_empty() || value.is_empty() {
                return None;
            }
            constraints.push((name.into_owned(), value.into_owned()));
        }
    }
    Some(ClinicalScope { context, resource_type, permissions, constraints })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_forms() {
        let s = parse_clinical("patient/Observation.rs?category=laboratory").unwrap();
        assert_eq!(s.context, Context::Patient);
        assert_eq!(s.resource_type.as_deref(), Some("Observation"));
        assert!(s.grants(Permission::Read, "Observation") && s.grants(Permission::Search, "Observation"));
        assert!(!s.grants(Permission::Create, "Observation") && !s.grants(Permission::Read, "Patient"));
        assert_eq!(s.constraints, [("category".to_owned(), "laboratory".to_owned())]);

        let v1 = parse_clinical("user/*.read").unwrap();
        assert!(v1.grants(Permission::Read, "Patient") && v1.grants(Permission::Search, "Encounter"));
        assert!(!v1.grants(Permission::Update, "Patient"));
        let write = parse_clinical("system/Patient.write").unwrap();
        assert_eq!(write.permissions, "cud");
        assert_eq!(parse_clinical("user/*.*").unwrap().permissions, "cruds");
        assert_eq!(parse_clinical("user/*.cruds").unwrap().permissions, "cruds");
    }

    #[test]
    fn malformed_scopes_grant_nothing() {
        for bad in [
            "patient/Observation.sr",
            "user/Foo.r",
            "user/Observation.",
            "nurse/*.r",
            "user/*.x",
            "user/*.read?x=1",
            "user/Observation.rs?=x",
            "patient",
        ] {
            assert_eq!(parse_clinical(bad), None, "{bad}");
        }
        let set = ScopeSet::parse("openid fhirUser launch/patient user/Patient.r admin/erasure admin/");
        assert_eq!(set.clinical.len(), 1);
        assert_eq!(set.admin, ["erasure"]);
        assert_eq!(set.other, ["openid", "fhirUser", "launch/patient", "admin/"]);
        assert!(set.has_admin("erasure") && !set.has_admin("keys"));
        assert!(ScopeSet::parse("admin/*").has_admin("keys"));
    }
}
