#!/usr/bin/env python3
"""Writes r4-search-parameters.json, the search parameters of FHIR R4 (4.0.1) as Hearth's
registry reads them, from the official SearchParameter definitions.

    python3 host/fhir/data/generate.py path/to/hl7.fhir.r4.examples-4.0.1/package

The definitions are Bundle-searchParams.json of the npm package hl7.fhir.r4.examples 4.0.1
(CC0), the same package the end-to-end tests load (tests/run fetches it, pinned by checksum).
Each multi-type definition is split per type, keeping the union members of that type only;
composites name their components' types. The patient compartment's types come from
CompartmentDefinition-patient.json.
"""
import json
import os
import re
import sys


def split_union(expression):
    """The top-level `|` members of a FHIRPath expression."""
    parts, depth, current = [], 0, ""
    for c in expression:
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        if c == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += c
    if current.strip():
        parts.append(current.strip())
    return parts


def member_type(part):
    match = re.match(r"^\(?([A-Z][A-Za-z]+)(\.|$)", part)
    return match.group(1) if match else None


def main(package):
    with open(os.path.join(package, "Bundle-searchParams.json")) as f:
        definitions = [entry["resource"] for entry in json.load(f)["entry"]]
    by_url = {d["url"]: d for d in definitions}
    params = []
    for d in definitions:
        if not d.get("expression"):
            continue  # _text, _content, _query: not element searches
        for base in d["base"]:
            members = [p for p in split_union(d["expression"]) if member_type(p) in (base, "Resource", "DomainResource")]
            if not members:
                continue
            entry = {"base": base, "code": d["code"], "type": d["type"], "expression": " | ".join(members),
                     "url": d["url"]}
            if d.get("target"):
                entry["target"] = d["target"]
            if d["type"] == "composite":
                entry["components"] = [{"type": by_url[c["definition"]]["type"], "expression": c["expression"]}
                                       for c in d["component"]]
                if d["id"] == "DocumentReference-relationship":
                    # The definition's components point at each other's definitions: `code` is
                    # the relation (a token), `target` the related document (a reference).
                    entry["components"] = [{"type": "token", "expression": "code"},
                                           {"type": "reference", "expression": "target"}]
            params.append(entry)
    params.sort(key=lambda p: (p["base"], p["code"]))
    with open(os.path.join(package, "CompartmentDefinition-patient.json")) as f:
        compartment = sorted(r["code"] for r in json.load(f)["resource"] if r.get("param"))
    out = {
        "source": "hl7.fhir.r4.examples 4.0.1 Bundle-searchParams.json, CompartmentDefinition-patient.json",
        "patientCompartment": compartment,
        "parameters": params,
    }
    target = os.path.join(os.path.dirname(os.path.abspath(__file__)), "r4-search-parameters.json")
    with open(target, "w") as f:
        json.dump(out, f, indent=0, separators=(",", ":"))
        f.write("\n")
    print(f"{len(params)} parameters of {len({p['base'] for p in params})} types -> {target}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
