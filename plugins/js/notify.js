// Change notifications, in JavaScript: the twin of plugins/notify (Rust). Posts a small JSON
// notice of every committed change (ids and versions, never clinical content) to the
// binding's `url`, which must be on the manifest's allowlist. A non-2xx answer or a
// connection failure is an error, so the server retries the event with backoff. The last
// delivered event id is kept in the plugin's key-value store and sent along.
//
// Binding config: {"url": "http://127.0.0.1:9000/hook", "authorization": "Bearer ..."}

import { send } from 'hearth:plugin/http@0.1.0';
import { get, set } from 'hearth:plugin/key-value@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Errors thrown from a function whose WIT result is `result<_, string>` become its `err`.
export function onChange(event, configText) {
  let config;
  try {
    config = JSON.parse(configText);
  } catch (e) {
    throw `binding config is not JSON: ${e}`;
  }
  if (typeof config?.url !== 'string') throw 'binding config lacks "url"';
  const stored = get('last-event-id');
  const previous = stored === undefined || stored === null ? null : Number.parseInt(decoder.decode(stored), 10);
  const notice = {
    eventId: Number(event.eventId),
    previousEventId: Number.isNaN(previous) ? null : previous,
    kind: event.kind,
    resourceType: event.resourceType,
    id: event.id,
    versionId: String(event.versionId),
    lastUpdated: event.lastUpdated,
  };
  const headers = [{ name: 'content-type', value: 'application/json' }];
  if (typeof config.authorization === 'string') headers.push({ name: 'authorization', value: config.authorization });
  const response = send({
    method: 'POST',
    url: config.url,
    headers,
    body: encoder.encode(JSON.stringify(notice)),
  });
  if (response.status < 200 || response.status >= 300) throw `the receiver answered HTTP ${response.status}`;
  try {
    set('last-event-id', encoder.encode(String(event.eventId)));
  } catch {
    // A full key-value store only loses the gap hint; the notice was delivered.
  }
}

export function convert(_body, _mediaType, _config) {
  throw 'the notify plugin converts nothing';
}
