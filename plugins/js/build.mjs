// Builds a JavaScript plugin into a WebAssembly component with componentize-js:
//   node build.mjs SOURCE.js WORLD OUT.wasm
// WORLD is `policy` or `integration` (from ../../wit). WASI features the worlds do not grant
// (stdio, random, clocks, outbound wasi:http) are disabled, so the component imports only
// what Hearth links.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const [source, world, out] = process.argv.slice(2);
if (!source || !['policy', 'integration'].includes(world) || !out) {
  console.error('usage: node build.mjs SOURCE.js policy|integration OUT.wasm');
  process.exit(2);
}
const wit = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'wit');
const started = Date.now();
const { component } = await componentize({
  sourcePath: source,
  witPath: wit,
  worldName: world,
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes in ${Date.now() - started} ms`);
