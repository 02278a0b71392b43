// Writes assets/manifest.json after `vite build`: the hash of every input the assets were
// built from (`source_hash`, over `inputs`) and the SHA-256 of every file written
// (`outputs`). The crate's tests recompute both (src/assets.rs), so committed assets that do
// not match the committed sources fail `cargo test`.
//
// Inputs: every file under web/, package.json, package-lock.json, vite.config.mjs and this
// script. Digest: SHA-256 over the inputs sorted by their `/`-separated path relative to the
// crate, each contributing `<path>\n<sha256 hex of its bytes>\n`.
//
// `node scripts/manifest.mjs --check` only compares (exit 1 when the assets are stale).
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join, relative, sep } from 'node:path';

const crate = join(import.meta.dirname, '..');
const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');
const rel = (p) => relative(crate, p).split(sep).join('/');

function walk(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

const inputs = [
  ...walk(join(crate, 'web')),
  ...['package.json', 'package-lock.json', 'vite.config.mjs', 'scripts/manifest.mjs'].map((f) =>
    join(crate, f),
  ),
]
  .map(rel)
  .sort();

const digest = createHash('sha256');
for (const f of inputs) digest.update(`${f}\n${sha256(readFileSync(join(crate, f)))}\n`);
const sourceHash = digest.digest('hex');

const assets = join(crate, 'assets');
const byPath = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

if (process.argv.includes('--check')) {
  const m = JSON.parse(readFileSync(join(assets, 'manifest.json'), 'utf8'));
  if (m.source_hash !== sourceHash) {
    console.error('assets/ are stale: run `./scripts/dev.sh console-build`');
    process.exit(1);
  }
  console.log('assets/ match the sources');
} else {
  const outputs = {};
  for (const p of walk(assets).map((p) => relative(assets, p).split(sep).join('/')).sort(byPath)) {
    if (p !== 'manifest.json') outputs[p] = sha256(readFileSync(join(assets, p)));
  }
  const manifest = { source_hash: sourceHash, inputs, outputs };
  writeFileSync(join(assets, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  console.log(`assets/manifest.json: ${Object.keys(outputs).length} files, sources ${sourceHash.slice(0, 12)}`);
}
