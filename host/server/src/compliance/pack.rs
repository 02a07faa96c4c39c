//! The pack on disk: `evidence.json` (the figures and findings), `evidence.html` (the same,
//! readable) and `signature.json` (each file's SHA-256 and an Ed25519 signature over that list
//! by the audit signing key). Verifying checks the signature against a key the verifier trusts,
//! then re-derives what the pack itself allows (the page, the findings, the totals) and, given
//! the database, the audit figures.

use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Evidence, FORMAT, derive_findings, hex, html, review_access};
use crate::audit::{AuditSigner, key_id_of, signed_by, verify_chain};
use crate::store::{Store, StoreError};

pub const EVIDENCE_JSON: &str = "evidence.json";
pub const EVIDENCE_HTML: &str = "evidence.html";
pub const SIGNATURE_JSON: &str = "signature.json";
/// The signed files, in the order the signed message lists them.
const SIGNED: [&str; 2] = [EVIDENCE_JSON, EVIDENCE_HTML];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Signature {
    format: String,
    algorithm: String,
    key_id: String,
    /// The signing key's public half (base64), for convenience: verification trusts only a key
    /// it is given, never this one.
    public_key: String,
    files: Vec<SignedFile>,
    /// Ed25519 over [`signed_message`], base64.
    signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignedFile {
    name: String,
    sha256: String,
}

fn signed_message(files: &[SignedFile]) -> Vec<u8> {
    let mut message = b"hearth/evidence-pack/v1\n".to_vec();
    for file in files {
        message.extend_from_slice(format!("{} {}\n", file.name, file.sha256).as_bytes());
    }
    message
}

/// The three files of a pack, as bytes.
pub struct PackFiles {
    pub files: Vec<(&'static str, Vec<u8>)>,
}

impl PackFiles {
    /// Renders and signs `evidence`.
    pub fn sign(evidence: &Evidence, signer: &AuditSigner) -> PackFiles {
        let json = serde_json::to_vec_pretty(evidence).expect("evidence serialises");
        let page = html::render(evidence).into_bytes();
        let files: Vec<SignedFile> = [(EVIDENCE_JSON, &json), (EVIDENCE_HTML, &page)]
            .iter()
            .map(|(name, bytes)| SignedFile { name: (*name).to_owned(), sha256: hex(&Sha256::digest(bytes)) })
            .collect();
        let signature = Signature {
            format: "hearth-evidence-signature/1".to_owned(),
            algorithm: "Ed25519".to_owned(),
            key_id: signer.key_id().to_owned(),
            public_key: base64::engine::general_purpose::STANDARD.encode(signer.public_key()),
            signature: base64::engine::general_purpose::STANDARD.encode(signer.sign(&signed_message(&files))),
            files,
        };
        let signature = serde_json::to_vec_pretty(&signature).expect("signature serialises");
        PackFiles { files: vec![(EVIDENCE_JSON, json), (EVIDENCE_HTML, page), (SIGNATURE_JSON, signature)] }
    }

    /// Writes the files into `dir` (created if missing; existing pack files are replaced).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, bytes) in &self.files {
            let path = dir.join(name);
            let partial = dir.join(format!(".{name}.partial"));
            std::fs::write(&partial, bytes)?;
            std::fs::rename(&partial, &path)?;
        }
        Ok(())
    }

    /// The files as one POSIX tar archive (what the console downloads): `tar -xf` it into a
    /// folder and run `hearth compliance verify` on that folder.
    pub fn tar(&self, mtime_secs: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, bytes) in &self.files {
            out.extend_from_slice(&tar_header(name, bytes.len(), mtime_secs));
            out.extend_from_slice(bytes);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }
}

/// A ustar header for a regular file (names are short and ASCII here).
fn tar_header(name: &str, size: usize, mtime_secs: u64) -> [u8; 512] {
    let mut header = [0u8; 512];
    let mut put = |at: usize, text: &str| header[at..at + text.len()].copy_from_slice(text.as_bytes());
    put(0, name);
    put(100, "0000644\0");
    put(108, "0000000\0");
    put(116, "0000000\0");
    put(124, &format!("{size:011o}\0"));
    put(136, &format!("{mtime_secs:011o}\0"));
    put(148, "        ");
    put(156, "0");
    put(257, "ustar\0");
    put(263, "00");
    let checksum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
    header
}

/// One thing `verify` checked.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// What verifying a pack found; the evidence is there when it could be read.
pub struct Verification {
    pub checks: Vec<Check>,
    pub evidence: Option<Evidence>,
}

impl Verification {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    fn check(&mut self, what: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check { what: what.to_owned(), ok, detail: detail.into() });
    }
}

/// Verifies the pack in `dir` against `trusted_key` (the audit signing key's public half):
/// the signature over both files' hashes, then everything the pack can re-derive from itself.
pub fn verify_pack(dir: &Path, trusted_key: &[u8]) -> Verification {
    let mut v = Verification { checks: Vec::new(), evidence: None };
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("cannot read {name}: {e}"));
    let (signature, json, page) = match (read(SIGNATURE_JSON), read(EVIDENCE_JSON), read(EVIDENCE_HTML)) {
        (Ok(s), Ok(j), Ok(h)) => (s, j, h),
        (s, j, h) => {
            let missing: Vec<String> = [s, j, h].into_iter().filter_map(Result::err).collect();
            v.check("files", false, missing.join("; "));
            return v;
        }
    };
    let Ok(signature) = serde_json::from_slice::<Signature>(&signature) else {
        v.check("signature", false, "signature.json is not a pack signature");
        return v;
    };
    for (name, bytes) in [(EVIDENCE_JSON, &json), (EVIDENCE_HTML, &page)] {
        let recorded = signature.files.iter().find(|f| f.name == name).map(|f| f.sha256.as_str());
        let actual = hex(&Sha256::digest(bytes));
        v.check(
            &format!("{name} unchanged"),
            recorded == Some(actual.as_str()),
            if recorded == Some(actual.as_str()) {
                format!("SHA-256 {actual}")
            } else {
                format!("{name} was changed after the pack was signed (SHA-256 {actual}, signed {recorded:?})")
            },
        );
    }
    let names: Vec<&str> = signature.files.iter().map(|f| f.name.as_str()).collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(&signature.signature).unwrap_or_default();
    let trusted_id = key_id_of(trusted_key);
    let valid = names == SIGNED && signed_by(trusted_key, &signed_message(&signature.files), &bytes);
    v.check(
        "signature",
        valid,
        if valid {
            format!("Ed25519 signature by the audit signing key {trusted_id}")
        } else if signature.key_id != trusted_id {
            format!("signed by key {}, not by the trusted audit key {trusted_id}", signature.key_id)
        } else {
            "the signature does not match the files it lists".to_owned()
        },
    );

    let evidence = match serde_json::from_slice::<Evidence>(&json) {
        Ok(e) if e.format == FORMAT => e,
        Ok(e) => {
            v.check("format", false, format!("format {} is not {FORMAT}", e.format));
            return v;
        }
        Err(error) => {
            v.check("format", false, format!("evidence.json does not read as evidence: {error}"));
            return v;
        }
    };
    let rendered = html::render(&evidence);
    v.check(
        "page matches the figures",
        rendered.as_bytes() == page.as_slice(),
        "evidence.html drawn again from evidence.json",
    );
    let derived = derive_findings(&evidence);
    let differing: Vec<&str> =
        derived.iter().zip(&evidence.findings).filter(|(a, b)| a != b).map(|(a, _)| a.id.as_str()).collect();
    let same = derived.len() == evidence.findings.len() && differing.is_empty();
    v.check(
        "findings follow from the figures",
        same,
        if same {
            format!("{} findings derived again", derived.len())
        } else {
            format!("findings differ from what the figures give: {differing:?}")
        },
    );
    let x = &evidence.encryption;
    let b = &evidence.access.break_glass;
    let totals = [
        ("stored versions = opened + erased + failed", x.stored_versions == x.opened + x.erased + x.failed),
        ("failures listed", x.failed_examples.len() as u64 == x.failed.min(super::FAILED_EXAMPLES as u64)),
        ("emergency accesses counted", b.accesses == b.entries.len() as u64),
        (
            "emergency reviews counted",
            b.reviewed == b.entries.iter().filter(|e| !e.reviews.is_empty()).count() as u64
                && b.pending == b.accesses - b.reviewed.min(b.accesses),
        ),
        (
            "audit figures",
            evidence.audit.entries_verified >= 0
                && (evidence.audit.problem.is_some() || evidence.audit.entries_verified >= evidence.audit.head_seq)
                && evidence.access.scanned_to_seq == evidence.audit.head_seq,
        ),
    ];
    let wrong: Vec<&str> = totals.iter().filter(|(_, ok)| !ok).map(|(what, _)| *what).collect();
    v.check(
        "totals add up",
        wrong.is_empty(),
        if wrong.is_empty() { "every total equals the sum of its parts".to_owned() } else { wrong.join("; ") },
    );
    v.evidence = Some(evidence);
    v
}

/// Re-derives the audit figures of `evidence` from the database it was made from: the chain
/// still verifies through the pack's last entry with the same hash (nothing before it changed
/// since), and the access review of the same entries gives the same figures.
pub async fn verify_against(
    store: &Store,
    evidence: &Evidence,
    signer_public_key: &[u8],
) -> Result<Vec<Check>, StoreError> {
    let mut checks = Vec::new();
    let head = evidence.audit.head_seq;
    let stored = store.audit_entries_at(&[head]).await?.pop();
    let hash = stored.map(|s| hex(&s.hash));
    let same = head == 0 || hash.as_deref() == Some(evidence.audit.head_hash.as_str());
    checks.push(Check {
        what: format!("audit entry {head} as the pack recorded it"),
        ok: same,
        detail: match &hash {
            Some(h) if same => format!("entry {head} still hashes to {h}"),
            Some(h) => format!("entry {head} now hashes to {h}, the pack recorded {}", evidence.audit.head_hash),
            None if head == 0 => "the pack was made from an empty audit log".to_owned(),
            None => format!("entry {head} is missing"),
        },
    });
    let chain = verify_chain(store, &[signer_public_key.to_vec()], &|_| {}).await?;
    let ok = chain.problem.is_none() || chain.entries >= head;
    checks.push(Check {
        what: "audit chain through the pack's last entry".to_owned(),
        ok,
        detail: match &chain.problem {
            None => format!("{} entries verify", chain.entries),
            Some(problem) if ok => format!("entries through {head} verify; later: {problem}"),
            Some(problem) => format!("{problem}"),
        },
    });
    let review = review_access(store, &evidence.period, head, &|_| {}).await?;
    let same = review == evidence.access;
    checks.push(Check {
        what: "access review re-derived".to_owned(),
        ok: same,
        detail: if same {
            format!("entries 1 to {head} give the same {} figures", review.principals.len())
        } else {
            "the audit log gives other access figures than the pack states".to_owned()
        },
    });
    Ok(checks)
}
