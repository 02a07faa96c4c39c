#!/usr/bin/env python3
"""Loads the official FHIR R4 examples into running Hearth servers and checks search against
an oracle that never asks the server's own extraction code: every expected result set is
computed here from the loaded JSON, with fhirpathpy (an independent FHIRPath engine, PyPI)
evaluating each parameter's expression from the official SearchParameter definitions, and the
FHIR search rules written out below (string prefix and normalisation, token system|code, date
ranges and prefixes, references, numbers and quantities, composites, :missing, :exact, chains,
_has, paging).

    check.py --package DIR --server BASE_URL TOKEN CA_PEM [--server ...]

Prints one line per finding and a JSON summary as the last line; exits 1 on any mismatch.
"""
import argparse
import datetime
import json
import os
import random
import re
import sys
import time
import unicodedata
import urllib.parse

import requests
from fhirpathpy import evaluate
from fhirpathpy.models import models

MODEL = models["r4"]

# Refused on purpose (docs/search.md, "The R4 examples"): the audit log is written by the
# server alone, and ids are at most 64 characters.
def expected_refusal(resource):
    if resource["resourceType"] == "AuditEvent":
        return "AuditEvent is written by the server"
    if len(resource.get("id", "")) > 64:
        return "id longer than 64 characters"
    return None


# --- Normalisation and values, as the FHIR search page defines them ---------------------------

def normalize(text):
    """Case-, accent- and punctuation-insensitive form for string search."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()
    return " ".join(w for w in re.split(r"[^\w]|_", folded) if w)


DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
US = 1_000_000


def date_range(text):
    """The [lo, hi] microseconds a FHIR date/dateTime/instant covers, or None."""
    m = DATE.match(str(text))
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, zone = m.groups()
    year = int(y)
    if mo is None:
        lo = datetime.datetime(year, 1, 1, tzinfo=datetime.timezone.utc)
        hi = datetime.datetime(year + 1, 1, 1, tzinfo=datetime.timezone.utc) if year < 9999 else None
    elif d is None:
        month = int(mo)
        lo = datetime.datetime(year, month, 1, tzinfo=datetime.timezone.utc)
        hi = datetime.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=datetime.timezone.utc)
    elif hh is None:
        lo = datetime.datetime(year, int(mo), int(d), tzinfo=datetime.timezone.utc)
        hi = lo + datetime.timedelta(days=1)
    else:
        tz = datetime.timezone.utc
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            tz = datetime.timezone(sign * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        lo = datetime.datetime(year, int(mo), int(d), int(hh), int(mi), int(ss or 0), tzinfo=tz)
        if frac:
            lo += datetime.timedelta(microseconds=int((frac + "000000")[:6]))
            hi = lo + datetime.timedelta(microseconds=1)
        else:
            hi = lo + datetime.timedelta(seconds=1 if ss is not None else 60)
    to_us = lambda t: (t - EPOCH) // datetime.timedelta(microseconds=1)
    return (to_us(lo), to_us(hi) - 1 if hi else 2**62)


def date_matches(prefix, value, search, now):
    lo, hi = value
    a, b = search
    within = lo >= a and hi <= b
    return {
        "eq": within,
        "ne": not within,
        "gt": hi > b,
        "lt": lo < a,
        "ge": hi > b or within,
        "le": lo < a or within,
        "sa": lo > b,
        "eb": hi < a,
    }[prefix]


def as_list(x):
    return x if isinstance(x, list) else [x]


def token_values(node):
    if isinstance(node, bool):
        return [(None, "true" if node else "false")]
    if isinstance(node, (str, int, float)):
        return [(None, str(node))]
    if isinstance(node, dict):
        if "coding" in node:
            return [v for c in node["coding"] for v in token_values(c)]
        if node.get("system") in ("phone", "fax", "email", "pager", "url", "sms", "other") and "value" in node:
            return [(None, node["value"])]  # ContactPoint: the value
        code = node.get("code", node.get("value"))
        if isinstance(code, str):
            return [(node.get("system"), code)]
    return []


def string_values(node):
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        parts = [node[k] for k in ("family", "text", "city", "district", "state", "postalCode", "country") if isinstance(node.get(k), str)]
        for k in ("given", "prefix", "suffix", "line"):
            parts += [p for p in node.get(k, []) if isinstance(p, str)]
        return parts
    return []


def date_values(node):
    if isinstance(node, str):
        r = date_range(node)
        return [r] if r else []
    if isinstance(node, dict):
        if "event" in node or "repeat" in node:
            out = [v for e in node.get("event", []) for v in date_values(e)]
            bounds = node.get("repeat", {}).get("boundsPeriod")
            return out + (date_values(bounds) if bounds else [])
        start = date_range(node["start"]) if "start" in node else None
        end = date_range(node["end"]) if "end" in node else None
        if start or end:
            return [(start[0] if start else -(2**62), end[1] if end else 2**62)]
    return []


def reference_values(node, targets):
    text = node.get("reference") if isinstance(node, dict) else node if isinstance(node, str) else None
    if not isinstance(text, str):
        return []
    text = text.split("|")[0]
    parts = text.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not re.match(r"^[A-Z][A-Za-z]+$", parts[-2]) or not re.match(r"^[A-Za-z0-9\-.]{1,64}$", parts[-1]):
        return []
    if targets and parts[-2] not in targets:
        return []
    return [(parts[-2], parts[-1])]


def quantity_values(node):
    if isinstance(node, dict) and isinstance(node.get("value"), (int, float)) and not isinstance(node.get("value"), bool):
        return [(float(node["value"]), node.get("code") or node.get("unit") or node.get("currency"), node.get("system"))]
    return []


# --- Expressions ------------------------------------------------------------------------------

def oracle_expression(expression):
    """The definition's expression for fhirpathpy, which has no resolve() (a reference's type
    is read from its text instead) and takes `x as T` of one item only (R4's definitions apply
    it to collections: ofType(T) is the filter they mean)."""
    expression = re.sub(
        r"where\(resolve\(\) is (\w+)\)",
        lambda m: f"where(reference.startsWith('{m.group(1)}/') or reference.contains('/{m.group(1)}/'))",
        expression,
    )
    expression = re.sub(r"\(([\w.]+) as (\w+)\)", r"\1.ofType(\2)", expression)
    return re.sub(r"\.as\((\w+)\)", r".ofType(\1)", expression)


def plain(value):
    """The JSON of a node fhirpathpy returns (raw: its own quantity and date types would hide
    the element as written)."""
    data = getattr(value, "data", value)
    if isinstance(data, (dict, list, str, bool, int, float)) or data is None:
        return data
    return str(data)


def evaluate_expression(resource, expression):
    try:
        nodes = evaluate(resource, oracle_expression(expression), model=MODEL, options={"returnRawData": True})
        return [plain(v) for v in nodes]
    except Exception as error:  # an expression fhirpathpy cannot evaluate: reported, not guessed
        raise RuntimeError(f"fhirpathpy: {expression}: {error}") from error


def component_values(node, expression):
    """A composite component's expression relative to an element (`code`, `value.as(Quantity)`,
    `value.as(Range)`): written out here, since fhirpathpy needs a resource to type choices."""
    out = []
    for part in expression.split("|"):
        part = part.strip()
        m = re.match(r"^(\w+)\.as\((\w+)\)$", part)
        if m:
            key = m.group(1) + m.group(2)[0].upper() + m.group(2)[1:]
            if key in node:
                out += as_list(node[key])
        elif re.match(r"^\w+$", part) and part in node:
            out += as_list(node[part])
    return out


# --- The oracle -------------------------------------------------------------------------------

class Oracle:
    def __init__(self, package, accepted):
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "host", "fhir", "data", "r4-search-parameters.json")) as f:
            data = json.load(f)
        # AuditEvent: the audit log's own lookups; three-part composites and `near`: not
        # supported (docs/search.md).
        self.params = [
            p for p in data["parameters"]
            if p["base"] != "AuditEvent" and p["type"] != "special" and len(p.get("components", [])) in (0, 2)
        ]
        self.by_type = {}
        for r in accepted.values():
            self.by_type.setdefault(r["resourceType"], []).append(r)
        self.random = random.Random(20261203)
        self.now = date_range(datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))[0]

    def values(self, param, resource):
        kind = param["type"]
        targets = param.get("target", [])
        if kind == "composite":
            return self.composite_values(param, resource)
        nodes = evaluate_expression(resource, param["expression"])
        out = []
        for n in nodes:
            if kind in ("token", "uri"):
                out += [("token", s, c) for s, c in (token_values(n) if kind == "token" else [(None, n)] if isinstance(n, str) else [])]
            elif kind == "string":
                out += [("string", s) for s in string_values(n)]
            elif kind == "date":
                out += [("date", r) for r in date_values(n)]
            elif kind == "reference":
                out += [("reference", t, i) for t, i in reference_values(n, targets)]
                identifier = n.get("identifier") if isinstance(n, dict) else None
                if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
                    out.append(("refid", identifier.get("system"), identifier["value"]))
            elif kind == "number":
                if isinstance(n, (int, float)) and not isinstance(n, bool):
                    out.append(("number", float(n)))
            elif kind == "quantity":
                out += [("quantity",) + q for q in quantity_values(n)]
        return out

    def composite_values(self, param, resource):
        base = param["expression"]
        elements = [resource] if "." not in base else [n for n in evaluate_expression(resource, base) if isinstance(n, dict)]
        first, second = param["components"]
        out = []
        for element in elements:
            a = [v for n in component_values(element, first["expression"]) for v in token_values(n)]
            b_nodes = component_values(element, second["expression"])
            for sys_a, code_a in a:
                for n in b_nodes:
                    if second["type"] == "token":
                        out += [("composite", sys_a, code_a, ("token", s, c)) for s, c in token_values(n)]
                    elif second["type"] == "quantity":
                        out += [("composite", sys_a, code_a, ("quantity",) + q) for q in quantity_values(n)]
        return out

    def queries(self, param, indexed):
        """Queries for `param` built from values found in the data, each with the ids the
        rules say it matches."""
        kind = param["type"]
        with_values = [(rid, vals) for rid, vals in indexed.items() if vals]
        if not with_values:
            return []
        picks = [self.random.choice(with_values)]
        queries = []
        code = param["code"]
        safe = lambda text: isinstance(text, str) and text and not re.search(r"[,|$\\]", text) and len(text) <= 200
        for _, values in picks:
            value = self.random.choice(values)
            if kind in ("token", "uri") and safe(value[2]) and (value[1] is None or safe(value[1])):
                system, c = value[1], value[2]
                q = f"{system}|{c}" if system else c
                match = lambda v, system=system, c=c: v[2] == c and (system is None or v[1] == system)
                queries.append((f"{code}={q}", match))
                if param["base"] != "Resource":
                    queries.append((f"{code}:not={q}", ("not", match)))
            elif kind == "string" and code == "phonetic":
                continue  # "sounds like" has no algorithm in the specification (tests/e2e/search.rs)
            elif kind == "reference" and value[0] == "refid" and safe(value[2]) and (value[1] is None or safe(value[1])):
                q = f"{value[1]}|{value[2]}" if value[1] else value[2]
                match = lambda v, s=value[1], i=value[2]: v[0] == "refid" and v[2] == i and (s is None or v[1] == s)
                queries.append((f"{code}:identifier={q}", match))
            elif kind == "string" and safe(value[1]) and normalize(value[1]):
                text = normalize(value[1])
                prefix = text[: max(1, min(len(text), 3))]
                queries.append((f"{code}={prefix.upper()}", lambda v, p=prefix: normalize(v[1]).startswith(p)))
                if value[1] == value[1].strip():
                    queries.append((f"{code}:exact={value[1]}", lambda v, t=value[1]: v[1] == t))
            elif kind == "date":
                lo, hi = value[1]
                if -(2**61) < lo < 2**61:
                    day = (EPOCH + datetime.timedelta(microseconds=lo)).strftime("%Y-%m-%d")
                    for prefix, text in (("eq", day[:4]), ("ge", day), ("lt", day[:7]), ("ne", day[:4]), ("sa", day[:4]), ("le", day)):
                        search = date_range(text)
                        queries.append((f"{code}={prefix}{text}", lambda v, p=prefix, s=search: date_matches(p, v[1], s, self.now)))
            elif kind == "reference" and value[0] == "reference":
                t, i = value[1], value[2]
                queries.append((f"{code}={t}/{i}", lambda v, t=t, i=i: v[0] == "reference" and v[1] == t and v[2] == i))
            elif kind in ("number", "quantity"):
                n = value[1]
                text = repr(n) if n != int(n) else str(int(n))
                if "e" not in text:
                    queries.append((f"{code}=ge{text}", lambda v, n=n: v[1] >= n))
                    queries.append((f"{code}=lt{text}", lambda v, n=n: v[1] < n))
            elif kind == "composite":
                sys_a, code_a, second = value[1], value[2], value[3]
                if not (safe(code_a) and (sys_a is None or safe(sys_a))):
                    continue
                first = f"{sys_a}|{code_a}" if sys_a else code_a
                first_match = lambda v, s=sys_a, c=code_a: v[2] == c and (s is None or v[1] == s)
                if second[0] == "token" and safe(second[2]) and (second[1] is None or safe(second[1])):
                    q = f"{second[1]}|{second[2]}" if second[1] else second[2]
                    queries.append((f"{code}={first}${q}", lambda v, f=first_match, s=second: f(v) and v[3][0] == "token" and v[3][2] == s[2] and (s[1] is None or v[3][1] == s[1])))
                elif second[0] == "quantity":
                    n = second[1]
                    text = repr(n) if n != int(n) else str(int(n))
                    if "e" not in text:
                        queries.append((f"{code}={first}$ge{text}", lambda v, f=first_match, n=n: f(v) and v[3][0] == "quantity" and v[3][1] >= n))
        if param["base"] != "Resource" and kind != "composite":
            queries.append((f"{code}:missing=true", "missing"))
        return queries


def expected_ids(match, indexed):
    if match == "missing":
        return {rid for rid, vals in indexed.items() if not vals}
    if match == "has":
        return {rid for rid, vals in indexed.items() if vals[0]}
    if isinstance(match, tuple):  # :not: resources without a matching token (missing ones included)
        return set(indexed) - expected_ids(match[1], indexed)
    return {rid for rid, vals in indexed.items() if any(match(v) for v in vals)}


# --- The servers --------------------------------------------------------------------------------

class Server:
    def __init__(self, base, token, ca):
        self.base = base.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["Accept"] = "application/fhir+json"
        self.session.verify = ca
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE must not replace the server's CA

    def search_count(self, res_type, query):
        response = self.session.get(f"{self.base}/{res_type}?{query}&_summary=count")
        if response.status_code != 200:
            return None, f"{response.status_code} {response.text[:300]}"
        return response.json().get("total"), None

    def search_ids(self, res_type, query, count=200):
        url = f"{self.base}/{res_type}?{query}&_count={count}&_elements=id"
        ids, pages = [], 0
        while url:
            response = self.session.get(url)
            if response.status_code != 200:
                return None, f"{response.status_code} {response.text[:300]}"
            bundle = response.json()
            ids += [e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]
            url = next((l["url"] for l in bundle.get("link", []) if l["relation"] == "next"), None)
            pages += 1
            if pages > 200:
                return None, "more than 200 pages"
        return ids, None


def chunks(items, max_bytes=3_000_000, max_entries=200):
    """Batches under the server's default body limit (8 MiB) and entry count."""
    chunk, size = [], 0
    for item in items:
        length = len(json.dumps(item[1]))
        if chunk and (size + length > max_bytes or len(chunk) == max_entries):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += length
    if chunk:
        yield chunk


def load(server, resources):
    """PUTs every example (batch Bundles); returns {(type, id): why} of those refused."""
    refused = {}
    for chunk in chunks(list(resources.items())):
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{t}/{i}"}} for (t, i), r in chunk],
        }
        response = server.session.post(server.base, json=bundle, headers={"Content-Type": "application/fhir+json"})
        if response.status_code != 200:
            raise SystemExit(f"batch failed: {response.status_code} {response.text[:500]}")
        for ((t, i), _), entry in zip(chunk, response.json()["entry"]):
            status = entry["response"]["status"]
            if not status.startswith(("200", "201")):
                outcome = entry["response"].get("outcome", {})
                message = "; ".join(x.get("diagnostics", "") for x in outcome.get("issue", []))
                refused[(t, i)] = f"{status}: {message}"
    return refused


def strip_meta(resource):
    resource = json.loads(json.dumps(resource))
    if resource.get("resourceType") == "Subscription":
        resource.pop("status", None)  # the server's (see above)
        resource.pop("error", None)
    meta = resource.get("meta", {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if "meta" in resource and not meta:
        del resource["meta"]
    return resource


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--package", required=True)
    parser.add_argument("--server", nargs=3, action="append", metavar=("BASE", "TOKEN", "CA"), required=True)
    parser.add_argument("--oracle-cache", help="keep the oracle's evaluation in this file (for working on the server)")
    args = parser.parse_args()

    resources = {}
    for name in sorted(os.listdir(args.package)):
        if not name.endswith(".json") or name in ("package.json", "ig-r4.json") or name.startswith("."):
            continue
        with open(os.path.join(args.package, name)) as f:
            r = json.load(f)
        if isinstance(r, dict) and "resourceType" in r and "id" in r:
            resources[(r["resourceType"], r["id"])] = r
    mismatches, summary = [], {"examples": len(resources)}

    expected_refused = {k: expected_refusal(r) for k, r in resources.items() if expected_refusal(r)}
    accepted = {k: r for k, r in resources.items() if k not in expected_refused}
    # The examples over 1 MB (definition Bundles of up to 35 MB, the core IG) are loaded
    # after the searches: a search returning them would spend its time decrypting and parsing
    # them, which says nothing about search. They are loaded and read back all the same.
    large = {k for k, r in resources.items() if len(json.dumps(r)) > 1_000_000}
    summary["loaded_after_search"] = len(large)
    oracle = Oracle(args.package, {k: r for k, r in accepted.items() if k not in large})

    # What each parameter indexes, per resource: computed once, for every server.
    indexed = {}
    errors = 0
    cached = None
    if args.oracle_cache and os.path.exists(args.oracle_cache):
        import pickle
        with open(args.oracle_cache, "rb") as f:
            cached = pickle.load(f)
        large_ids = {(t, i) for t, i in large}
        indexed = {
            k: (
                next(p for p in oracle.params if p["code"] == k[1] and p["base"] in (k[0], "Resource")),
                {rid: vals for rid, vals in per.items() if (k[0], rid) not in large_ids},
            )
            for k, per in cached.items()
        }
    for p in oracle.params if cached is None else []:
        types = list(oracle.by_type) if p["base"] == "Resource" else [p["base"]]
        for t in types:
            per = {}
            for r in oracle.by_type.get(t, []):
                try:
                    per[r["id"]] = oracle.values(p, r)
                except RuntimeError as error:
                    errors += 1
                    per = None
                    print(f"oracle cannot evaluate {t}.{p['code']}: {error}")
                    break
            # Subscription.status is the server's: a requested Subscription is activated or put
            # in error (docs/subscriptions.md), so the examples' values are not what it holds.
            if (t, p["code"]) == ("Subscription", "status"):
                continue
            if per is not None and (p["base"] != "Resource" or t in ("Patient", "Observation")):
                indexed[(t, p["code"])] = (p, per)
    summary["oracle_expression_errors"] = errors
    if args.oracle_cache and cached is None:
        import pickle
        with open(args.oracle_cache, "wb") as f:
            pickle.dump({k: per for k, (p, per) in indexed.items()}, f)

    queries = []
    for (t, code), (p, per) in sorted(indexed.items()):
        for q in oracle.queries(p, per):
            queries.append((t, q, per))
    # Chains, _has and paging, on the patients of the examples.
    patients = {r["id"]: r for r in oracle.by_type.get("Patient", [])}
    families = {pid: [normalize(n.get("family", "")) for n in r.get("name", [])] for pid, r in patients.items()}
    observations = indexed.get(("Observation", "subject"), (None, {}))[1]
    some_family = next(f for fs in families.values() for f in fs if f)
    chain = lambda v, fam=some_family[:3]: v[1] == "Patient" and any(f.startswith(fam) for f in families.get(v[2], []))
    queries.append(("Observation", (f"subject:Patient.family={some_family[:3]}", chain), observations))
    codes = indexed.get(("Observation", "code"), (None, {}))[1]
    has_code = next(v[2] for vals in codes.values() for v in vals if v[1] == "http://loinc.org")
    patient_ids_with = {v[2] for oid, vals in observations.items() for v in vals if v[1] == "Patient" and any(c[2] == has_code for c in codes.get(oid, []))}
    queries.append(("Patient", (f"_has:Observation:subject:code={has_code}", "has"), {pid: [pid in patient_ids_with] for pid in patients}))
    summary["queries_per_server"] = len(queries)

    def check_loaded(server, subset):
        refused = load(server, subset)
        for k, v in sorted(refused.items()):
            if k not in expected_refused:
                mismatches.append(f"{server.base}: {k[0]}/{k[1]} refused: {v}")
        for k in subset:
            if k in expected_refused and k not in refused:
                mismatches.append(f"{server.base}: {k[0]}/{k[1]} accepted, expected refused: {expected_refused[k]}")
        differing = 0
        for (t, i), r in subset.items():
            if (t, i) in refused or (t, i) in expected_refused:
                continue
            response = server.session.get(f"{server.base}/{t}/{i}")
            if response.status_code != 200 or strip_meta(response.json()) != strip_meta(r):
                differing += 1
                if differing <= 10:
                    mismatches.append(f"{server.base}: {t}/{i} does not read back identical ({response.status_code})")
        return len(refused), differing

    def run(base, token, ca):
        server = Server(base, token, ca)
        phase = time.monotonic()
        refused, differing = check_loaded(server, {k: r for k, r in resources.items() if k not in large})
        summary[f"refused {base}"] = refused
        summary[f"read_back_differing {base}"] = differing
        summary[f"seconds loading {base}"] = round(time.monotonic() - phase)
        phase = time.monotonic()
        # Search.
        done = 0
        for t, (name_value, match), per in queries:
            name, _, value = name_value.partition("=")
            query = f"{urllib.parse.quote(name, safe=':._-')}={urllib.parse.quote(value, safe='')}"
            expected = expected_ids(match, per)
            count = 7 if done % 10 == 0 else 200  # every tenth query pages in small steps
            started = time.monotonic()
            done += 1
            if len(expected) > 50:
                # Hundreds of (large) definitions: their number, not their bodies.
                total, error = server.search_count(t, query)
                if error or total != len(expected):
                    mismatches.append(f"{base}: {t}?{name_value}: expected {len(expected)}, counted {total} {error or ''}")
                continue
            ids, error = server.search_ids(t, query, count)
            elapsed = time.monotonic() - started
            if elapsed > 2:
                print(f"slow ({elapsed:.1f} s): {t}?{name_value}")
            if error:
                mismatches.append(f"{base}: {t}?{name_value}: {error}")
                continue
            if len(ids) != len(set(ids)):
                mismatches.append(f"{base}: {t}?{name_value}: a resource on two pages")
            got = set(ids)
            if got != expected:
                mismatches.append(
                    f"{base}: {t}?{name_value}: expected {len(expected)}, got {len(got)}; "
                    f"missing {sorted(expected - got)[:5]}, extra {sorted(got - expected)[:5]}"
                )
        summary[f"queries {base}"] = done
        summary[f"seconds searching {base}"] = round(time.monotonic() - phase)
        phase = time.monotonic()
        refused, differing = check_loaded(server, {k: r for k, r in resources.items() if k in large})
        summary[f"read_back_differing {base}"] += differing
        summary[f"seconds loading large {base}"] = round(time.monotonic() - phase)

    # The servers side by side (each its own database).
    import threading
    def guarded(base, token, ca):
        try:
            run(base, token, ca)
        except Exception as error:  # a crash of the check is a failure, not a pass
            mismatches.append(f"{base}: the check stopped: {error!r}")

    threads = [threading.Thread(target=guarded, args=tuple(server)) for server in args.server]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for m in mismatches:
        print(m)
    summary["mismatches"] = len(mismatches)
    print(json.dumps(summary))
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
