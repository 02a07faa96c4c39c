// Consent policy, in JavaScript: the twin of plugins/consent (Rust), with the same behaviour.
// Denies access to a patient's data while an active Consent of that patient says `deny`,
// unless the principal's purpose of use is one the Consent permits by exception, the principal
// is the patient, or the principal broke the glass with a stated reason (allowed, labelled
// ETREAT, and audited by the server).
//
// Binding config (all optional): {"exempt_types": ["Consent"], "allow_break_glass": true}

import { activeConsents } from 'hearth:plugin/lookup@0.1.0';

export function authorize(request, resources) {
  const config = parseConfig(request.config);
  const exempt = Array.isArray(config.exempt_types) ? config.exempt_types : ['Consent'];
  const allowBreakGlass = config.allow_break_glass !== false;
  const consentsOf = new Map();
  return resources.map((resource) => {
    const patient = resource.compartment;
    if (patient === undefined || patient === null) return { tag: 'allow' };
    if (exempt.includes(resource.resourceType)) return { tag: 'allow' };
    if (request.principal.patient === patient) return { tag: 'allow' };
    if (!consentsOf.has(patient)) {
      consentsOf.set(patient, activeConsents(patient).flatMap((text) => {
        try { return [JSON.parse(text)]; } catch { return []; }
      }));
    }
    const denying = consentsOf.get(patient).find((c) => denies(c, request.principal));
    if (denying === undefined) return { tag: 'allow' };
    if (request.principal.breakGlassReason != null && allowBreakGlass) {
      return {
        tag: 'allow-with',
        val: {
          redact: [],
          labels: [{
            system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason',
            code: 'ETREAT',
            display: 'emergency treatment (break-glass)',
          }],
        },
      };
    }
    const named = typeof denying.id === 'string' ? ` Consent/${denying.id}` : '';
    return { tag: 'deny', val: `the patient's consent${named} denies this access` };
  });
}

export function validate(_request, _resource) {
  return [];
}

function parseConfig(text) {
  try {
    const value = JSON.parse(text);
    return value !== null && typeof value === 'object' ? value : {};
  } catch {
    return {};
  }
}

// Whether an active Consent denies this principal: its top-level provision is `deny`, it names
// the principal among its actors (or names none), and no nested `permit` provision covers the
// principal's purpose of use.
function denies(consent, principal) {
  const provision = consent.provision;
  if (!provision || provision.type !== 'deny') return false;
  const actors = Array.isArray(provision.actor) ? provision.actor : [];
  if (actors.length > 0) {
    const named = actors.some((actor) => {
      const ref = actor?.reference?.reference;
      return typeof ref === 'string' && (ref === principal.subject || ref.split('/').pop() === principal.subject);
    });
    if (!named) return false;
  }
  const purpose = principal.purposeOfUse;
  const nested = Array.isArray(provision.provision) ? provision.provision : [];
  const permittedByException = nested.some((p) => p.type === 'permit'
    && Array.isArray(p.purpose)
    && p.purpose.some((c) => typeof c.code === 'string' && c.code === purpose));
  return !permittedByException;
}
