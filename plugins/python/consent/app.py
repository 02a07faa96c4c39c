"""Consent policy, in Python: the twin of plugins/consent (Rust), with the same behaviour.

Denies access to a patient's data while an active Consent of that patient says `deny`, unless
the principal's purpose of use is one the Consent permits by exception, the principal is the
patient, or the principal broke the glass with a stated reason (allowed, labelled ETREAT, and
audited by the server).

Binding config (all optional): {"exempt_types": ["Consent"], "allow_break_glass": true}
"""

import json

import wit_world
from wit_world.imports import lookup
from wit_world.imports.types import (
    Coding,
    Decision_Allow,
    Decision_AllowWith,
    Decision_Deny,
    Obligations,
)


class WitWorld(wit_world.WitWorld):
    def authorize(self, request, resources):
        config = _config(request.config)
        exempt = config.get("exempt_types")
        if not isinstance(exempt, list):
            exempt = ["Consent"]
        allow_break_glass = config.get("allow_break_glass", True) is not False
        consents_of = {}
        decisions = []
        for resource in resources:
            patient = resource.compartment
            if patient is None or resource.resource_type in exempt or request.principal.patient == patient:
                decisions.append(Decision_Allow())
                continue
            if patient not in consents_of:
                consents_of[patient] = [c for c in map(_parse, lookup.active_consents(patient)) if c is not None]
            denying = next((c for c in consents_of[patient] if _denies(c, request.principal)), None)
            if denying is None:
                decisions.append(Decision_Allow())
            elif request.principal.break_glass_reason is not None and allow_break_glass:
                label = Coding(
                    system="http://terminology.hl7.org/CodeSystem/v3-ActReason",
                    code="ETREAT",
                    display="emergency treatment (break-glass)",
                )
                decisions.append(Decision_AllowWith(Obligations(redact=[], labels=[label])))
            else:
                named = f" Consent/{denying['id']}" if isinstance(denying.get("id"), str) else ""
                decisions.append(Decision_Deny(f"the patient's consent{named} denies this access"))
        return decisions

    def validate(self, request, resource):
        return []


def _config(text):
    value = _parse(text)
    return value if isinstance(value, dict) else {}


def _parse(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _denies(consent, principal):
    """Whether an active Consent denies this principal: its top-level provision is `deny`, it
    names the principal among its actors (or names none), and no nested `permit` provision
    covers the principal's purpose of use."""
    provision = consent.get("provision")
    if not isinstance(provision, dict) or provision.get("type") != "deny":
        return False
    actors = provision.get("actor")
    if isinstance(actors, list) and actors:
        def names(actor):
            ref = (actor.get("reference") or {}).get("reference") if isinstance(actor, dict) else None
            return isinstance(ref, str) and (ref == principal.subject or ref.split("/")[-1] == principal.subject)

        if not any(names(a) for a in actors):
            return False
    purpose = principal.purpose_of_use
    nested = provision.get("provision")
    permitted = isinstance(nested, list) and any(
        isinstance(p, dict)
        and p.get("type") == "permit"
        and isinstance(p.get("purpose"), list)
        and any(isinstance(c, dict) and c.get("code") == purpose and purpose is not None for c in p["purpose"])
        for p in nested
    )
    return not permitted
