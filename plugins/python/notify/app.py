"""Change notifications, in Python: the twin of plugins/notify (Rust).

Posts a small JSON notice of every committed change (ids and versions, never clinical content)
to the binding's `url`, which must be on the manifest's allowlist. A non-2xx answer or a
connection failure is an error, so the server retries the event with backoff. The last
delivered event id is kept in the plugin's key-value store and sent along.

Binding config: {"url": "http://127.0.0.1:9000/hook", "authorization": "Bearer ..."}
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import http, key_value
from wit_world.imports.types import ChangeKind

_KINDS = {ChangeKind.CREATED: "created", ChangeKind.UPDATED: "updated", ChangeKind.DELETED: "deleted"}


class WitWorld(wit_world.WitWorld):
    def on_change(self, event, config):
        # Raising Err(...) answers the WIT `result` with its error: the server retries.
        try:
            config = json.loads(config)
        except ValueError as e:
            raise Err(f"binding config is not JSON: {e}")
        url = config.get("url") if isinstance(config, dict) else None
        if not isinstance(url, str):
            raise Err('binding config lacks "url"')
        stored = key_value.get("last-event-id")
        try:
            previous = int(stored.decode()) if stored is not None else None
        except ValueError:
            previous = None
        notice = {
            "eventId": event.event_id,
            "previousEventId": previous,
            "kind": _KINDS[event.kind],
            "resourceType": event.resource_type,
            "id": event.id,
            "versionId": str(event.version_id),
            "lastUpdated": event.last_updated,
        }
        headers = [http.Header(name="content-type", value="application/json")]
        if isinstance(config.get("authorization"), str):
            headers.append(http.Header(name="authorization", value=config["authorization"]))
        request = http.OutgoingRequest(
            method="POST", url=url, headers=headers, body=json.dumps(notice, separators=(",", ":")).encode()
        )
        # An import returning `result` raises Err on its error, which propagates as ours.
        response = http.send(request)
        if not 200 <= response.status < 300:
            raise Err(f"the receiver answered HTTP {response.status}")
        try:
            key_value.set("last-event-id", str(event.event_id).encode())
        except Err:
            pass  # a full key-value store only loses the gap hint; the notice was delivered
        return None

    def convert(self, body, media_type, config):
        raise Err("the notify plugin converts nothing")
