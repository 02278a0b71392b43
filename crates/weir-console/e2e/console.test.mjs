// The console and GraphiQL in a real browser (Debian's chromium, driven by playwright-core)
// against a real `weir serve` (the binary cargo built) and the real graph server.
//
//   node --test --test-concurrency=1 crates/weir-console/e2e/
//
// Needs: the graph server and NATS up (`./scripts/dev.sh up`; settings from the environment or
// .weir/env), the `weir` binary (WEIR_BIN, default target/debug/weir), chromium (CHROMIUM,
// default /usr/bin/chromium) and `npm ci` in crates/weir-console. It fails loudly when any is
// missing. Screenshots go to target/console-artifacts/ (CONSOLE_ARTIFACTS), with the server's
// log. Each run uses its own label prefix, so it never touches other data in the graph.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, createWriteStream } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';

const REPO = resolve(import.meta.dirname, '../../..');
const WEIR = process.env.WEIR_BIN || join(REPO, 'target/debug/weir');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = process.env.CONSOLE_ARTIFACTS || join(REPO, 'target/console-artifacts');
const MAPPING = readFileSync(join(REPO, 'examples/people/mapping.toml'), 'utf8');
const KEY = `console-e2e-${randomBytes(8).toString('hex')}`;
const PREFIX = `e2e${randomBytes(4).toString('hex')}_`;
const PEOPLE = Number(process.env.CONSOLE_E2E_PEOPLE || 20000);
const WAIT = 90_000;
const MEMORY_LIMIT = 1024 * 1024 * 1024;

/** A free TCP port on 127.0.0.1. */
function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, timeout = WAIT) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(200);
  }
}

const server = { proc: null, base: '', dir: '', log: '' };
let browser;
/** Every request any page made (URLs), and WebSocket addresses. */
const requests = [];
/** Console errors and uncaught exceptions, per page name. */
const problems = new Map();

async function call(path, { method = 'GET', body, key = KEY, headers = {} } = {}) {
  const res = await fetch(server.base + path, {
    method,
    body,
    headers: { Authorization: `Bearer ${key}`, ...headers },
  });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

async function newPage(name, { width = 1280, height = 800 } = {}) {
  const page = await browser.newPage();
  await page.setViewportSize({ width, height });
  const list = [];
  problems.set(name, list);
  page.on('console', (m) => {
    if (m.type() === 'error') list.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => list.push(`exception: ${e.message}`));
  page.on('request', (r) => requests.push(r.url()));
  page.on('websocket', (ws) => requests.push(ws.url()));
  return page;
}

async function shot(page, name, fullPage = false) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage });
}

function assertNoProblems(name) {
  assert.deepEqual(problems.get(name), [], `console errors on ${name}`);
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  assert.ok(existsSync(WEIR), `no weir binary at ${WEIR}: run \`cargo build -p weir-cli\` (or set WEIR_BIN)`);
  assert.ok(existsSync(CHROMIUM), `no chromium at ${CHROMIUM}: run \`./scripts/dev.sh test\` (it installs it) or set CHROMIUM`);
  server.dir = mkdtempSync(join(tmpdir(), 'weir-console-e2e-'));
  const port = await freePort();
  server.base = `http://127.0.0.1:${port}`;
  const config = join(server.dir, 'serve.toml');
  writeFileSync(
    config,
    // A memory limit, so the chart draws it and the page shows a pressure level.
    `[jobs]\njob_dir = ${JSON.stringify(join(server.dir, 'jobs'))}\nspool_dir = ${JSON.stringify(join(server.dir, 'spool'))}\n[memory]\nlimit = ${MEMORY_LIMIT}\n`,
  );
  server.log = join(ARTIFACTS, 'weir-serve.log');
  const log = createWriteStream(server.log);
  server.proc = spawn(WEIR, ['serve', '--config', config, '--bind', `127.0.0.1:${port}`, '--api-key', KEY], {
    cwd: REPO,
    env: { ...process.env, WEIR_LOG: process.env.WEIR_LOG || 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server.proc.stdout.pipe(log);
  server.proc.stderr.pipe(log);
  let exited = null;
  server.proc.on('exit', (code, signal) => {
    exited = `${code ?? signal}`;
  });
  await until(
    `weir serve ready at ${server.base} (log: ${server.log}; is the graph server up? ./scripts/dev.sh up)`,
    async () => {
      if (exited) throw new Error(`weir serve exited (${exited}); see ${server.log}`);
      const r = await fetch(`${server.base}/ready`);
      return r.status === 200;
    },
    60_000,
  );
  // A generated dataset matching examples/people/mapping.toml, written by weir itself.
  const gen = spawnSync(WEIR, ['generate', '--people', String(PEOPLE), '--seed', '7', '--out', join(server.dir, 'people.csv')]);
  assert.equal(gen.status, 0, `weir generate failed: ${gen.stderr}`);
  browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'weir-console-chromium-')), {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 800 },
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server.proc && server.proc.exitCode == null) {
    server.proc.kill('SIGINT');
    await Promise.race([new Promise((r) => server.proc.once('exit', r)), sleep(20_000)]);
    if (server.proc.exitCode == null) server.proc.kill('SIGKILL');
  }
  if (server.dir) rmSync(server.dir, { recursive: true, force: true });
});

describe('web console', { timeout: 170_000 }, () => {
  let page;

  test('loads with the key from the address, removes it from the address, no console errors', async () => {
    page = await newPage('console');
    await page.goto(`${server.base}/#key=${KEY}`);
    await page.locator('#main').waitFor({ state: 'visible' });
    assert.equal(new URL(page.url()).hash, '', 'the key is removed from the address bar');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('weir.apiKey')), KEY);
    await page.locator('#health .pill.up').first().waitFor();
    await page.locator('#tail-status.live').waitFor();
    await page.locator('#jobs').waitFor({ state: 'visible' });
    await page.locator('[data-figure="pool.max_size"]').waitFor();
    await shot(page, 'console-start');
    assertNoProblems('console');
  });

  test('a file uploaded through the page becomes a job that reaches 100 % and matches GET /jobs', async () => {
    await page.fill('#job-mapping', MAPPING);
    await page.fill('#job-prefix', PREFIX);
    await page.locator('#mapping-verdict.ok').waitFor();
    assert.match(await page.textContent('#mapping-verdict'), new RegExp(`${PREFIX}Person`));
    // A broken mapping is refused with its line and field before anything is uploaded.
    await page.fill('#job-mapping', MAPPING.replace('type = "int" },\n  { name = "name"', 'type = "integer" },\n  { name = "name"'));
    await page.locator('#mapping-verdict.bad').waitFor();
    assert.match(await page.textContent('#mapping-verdict'), /line \d+, nodes\[0\]\.properties\[0\]\.type/);
    assert.equal(await page.isDisabled('#job-start'), true);
    await page.fill('#job-mapping', MAPPING);
    await page.locator('#mapping-verdict.ok').waitFor();
    await page.setInputFiles('#job-file', join(server.dir, 'people.csv'));
    await page.click('#job-start');
    const job = page.locator('article.job').first();
    await job.waitFor();
    const id = await job.getAttribute('data-job-id');
    // Screenshot mid-ingest when the job is caught running with some progress.
    let midShot = false;
    await until('the job to complete', async () => {
      const state = await job.getAttribute('data-state');
      const now = await job.locator('.bar').getAttribute('aria-valuenow');
      if (!midShot && state === 'running' && now && Number(now) > 5) {
        await shot(page, 'console-ingest');
        midShot = true;
      }
      if (state === 'failed' || state === 'cancelled') throw new Error(`job ${state}`);
      return state === 'completed';
    });
    if (!midShot) await shot(page, 'console-ingest');
    assert.equal(await job.locator('.bar').getAttribute('aria-valuenow'), '100.0');
    const { status, json } = await call('/jobs');
    assert.equal(status, 200);
    const api = json.jobs.find((j) => j.id === id);
    assert.ok(api, `GET /jobs lists ${id}`);
    assert.equal(api.state, 'completed');
    assert.equal(api.records_committed, PEOPLE);
    // The page shows what the API says (read after the state change settled).
    await until('the page to show the final counts', async () => {
      const shown = {};
      for (const f of ['records_committed', 'records_read', 'records_dead_lettered']) {
        shown[f] = Number((await job.locator(`[data-field="${f}"]`).textContent()).replace(/,/g, ''));
      }
      assert.deepEqual(shown, {
        records_committed: api.records_committed,
        records_read: api.records_read,
        records_dead_lettered: api.records_dead_lettered,
      });
      return true;
    });
    // The change tail shows the job's changes.
    await until('the change tail to show the job', async () => {
      const text = await page.textContent('#tail-rows');
      return text.includes(`${PREFIX}Person`) && text.includes(id.slice(0, 8));
    });
    // Every change of the job reaches the tail: at least one Person, one WORKS_AT and one
    // KNOWS change per person (companies come on top). If the server let the tail go for
    // falling behind, it resumed where it stopped (shown as an interruption), so the count
    // still reaches it.
    await until('the change tail to have every change', async () => {
      const received = Number((await page.textContent('#tail-count')).replace(/,/g, ''));
      return received >= 3 * PEOPLE;
    });
    if (await page.isVisible('#tail-missed')) {
      assert.match(await page.textContent('#tail-missed'), /[1-9][\d,]* interruption/);
    }
    await shot(page, 'console-done', true);
    assertNoProblems('console');
  });

  test('the change tail filters by label and type', async () => {
    await page.fill('#tail-labels', `${PREFIX}Company`);
    await page.click('#tail-form button[type=submit]');
    await page.click('#tail-clear');
    await page.locator('#tail-status.live').waitFor();
    // A small second job: only its Company changes show. The new subscription follows live
    // changes from when the server has it, which the page cannot see: the job is submitted
    // again (its changes repeat: MERGE) until they show.
    const csv = readFileSync(join(server.dir, 'people.csv'), 'utf8').split('\n').slice(0, 6).join('\n');
    const q = new URLSearchParams({ mapping: MAPPING, label_prefix: PREFIX, format: 'csv' });
    let submitted = 0;
    await until('Company changes in the filtered tail', async () => {
      const rows = await page.locator('#tail-rows tr').allTextContents();
      if (rows.length > 0) return rows.every((t) => t.includes(`${PREFIX}Company`));
      if (submitted < 10) {
        const r = await call(`/jobs/upload?${q}`, { method: 'POST', body: csv });
        assert.equal(r.status, 202, JSON.stringify(r.json));
        submitted += 1;
        await sleep(1500);
      }
      return false;
    });
    const rows = await page.locator('#tail-rows tr').allTextContents();
    assert.ok(rows.every((t) => !t.includes(`${PREFIX}Person`)), rows.join('\n'));
    await page.fill('#tail-labels', '');
    await page.click('#tail-form button[type=submit]');
    assertNoProblems('console');
  });

  test('the memory chart draws the points of the history endpoint', async () => {
    const svg = page.locator('#memory-chart');
    await until('two memory samples', async () => Number(await svg.getAttribute('data-samples')) >= 2);
    const drawn = Number(await svg.getAttribute('data-samples'));
    const last = Number(await svg.getAttribute('data-last-timestamp'));
    const points = (await svg.locator('polyline.used').getAttribute('points')).trim().split(/\s+/);
    assert.equal(points.length, drawn, 'one point per sample');
    const { status, json } = await call('/api/memory/history?limit=1000');
    assert.equal(status, 200);
    const stamps = json.samples.map((s) => s.timestamp_ms);
    assert.ok(stamps.includes(last), 'the newest point drawn is a sample of the endpoint');
    assert.ok(drawn <= json.total, `${drawn} points, ${json.total} samples`);
    // The limit is drawn, and the level is one a limit allows (not `unknown`).
    const limits = (await svg.locator('polyline.limit').getAttribute('points')).trim().split(/\s+/);
    assert.equal(limits.length, drawn);
    // The configured limit, or a lower cgroup limit of the machine.
    assert.ok(json.samples.every((s) => s.limit_bytes > 0 && s.limit_bytes <= MEMORY_LIMIT));
    const stats = await page.textContent('#memory-stats');
    assert.match(stats, /used \/ limit[\d.]+ [KMG]iB \/ [\d.]+ [KMG]iB \(\d+\s%\)/);
    assert.match(stats, /pressure(normal|warning|critical)/);
    assert.match(stats, /leak verdict(insufficient data|stable|growing|leaking)/);
    await page.locator('#memory').scrollIntoViewIfNeeded();
    await shot(page, 'console-memory');
    assertNoProblems('console');
  });

  test('fits a phone-sized screen', async () => {
    const phone = await newPage('phone', { width: 390, height: 844 });
    await phone.goto(`${server.base}/#key=${KEY}`);
    await phone.locator('#main').waitFor({ state: 'visible' });
    await phone.locator('article.job').first().waitFor();
    assert.equal(await phone.evaluate(() => window.innerWidth), 390);
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `the page scrolls sideways by ${overflow}px`);
    await shot(phone, 'console-phone');
    await phone.close();
    assertNoProblems('phone');
  });
});

describe('GraphiQL', { timeout: 120_000 }, () => {
  let page;

  // Types the operation into the editor as a user would (GraphiQL reads the operation name
  // from the editor's change events, debounced).
  async function setQuery(q) {
    await page.click('.graphiql-query-editor .CodeMirror');
    await page.keyboard.press('Control+A');
    await page.keyboard.press('Delete');
    await page.keyboard.insertText(q);
    await sleep(500);
  }
  const response = () =>
    page.evaluate(() => document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue());

  test('runs a query over HTTP with the key entered once', async () => {
    page = await newPage('graphiql');
    await page.goto(`${server.base}/graphiql#key=${KEY}`);
    await page.locator('.graphiql-query-editor .CodeMirror').waitFor();
    assert.equal(new URL(page.url()).hash, '');
    // The schema came by introspection (docs and completion work).
    await page.click('[aria-label="Show Documentation Explorer"]');
    await page.getByText('A GraphQL schema provides a root type').waitFor();
    await page.locator('.graphiql-doc-explorer').getByText('SubscriptionRoot').first().waitFor();
    await setQuery(`query Counts {\n  counts(labels: ["${PREFIX}Person", "${PREFIX}Company"]) {\n    label count\n  }\n}`);
    await page.click('.graphiql-execute-button');
    const out = JSON.parse(await until('the query result', async () => {
      const text = await response();
      return text.includes('"counts"') ? text : null;
    }));
    assert.equal(out.data.counts[0].label, `${PREFIX}Person`);
    assert.ok(out.data.counts[0].count >= PEOPLE, JSON.stringify(out));
    await shot(page, 'graphiql-query');
    assertNoProblems('graphiql');
  });

  test('runs a subscription over the WebSocket and shows its results', async () => {
    await setQuery(`subscription {\n  graphChanges(labels: ["${PREFIX}Person"]) {\n    seq label key operation missed\n  }\n}`);
    await page.click('.graphiql-execute-button');
    // Give the subscription a moment to register, then write a few people.
    await sleep(1000);
    const csv = 'person_id,name\n900001,Ada\n900002,Grace\n';
    const q = new URLSearchParams({
      mapping: '[[nodes]]\nlabel = "Person"\nkey = ["id"]\nproperties = [{ name = "id", field = "person_id", type = "int" }, { name = "name" }]\n',
      label_prefix: PREFIX,
      format: 'csv',
    });
    const r = await call(`/jobs/upload?${q}`, { method: 'POST', body: csv });
    assert.equal(r.status, 202, JSON.stringify(r.json));
    const text = await until('a graphChanges result', async () => {
      const t = await response();
      return t.includes('"graphChanges"') && t.includes(`${PREFIX}Person`) ? t : null;
    });
    assert.match(text, /"operation": "MERGED"|"operation": "CREATED"|"operation": "UPDATED"/);
    await shot(page, 'graphiql-subscription');
    await page.click('.graphiql-execute-button'); // stop it
    assertNoProblems('graphiql');
  });
});

describe('a wrong key', { timeout: 60_000 }, () => {
  for (const [path, name] of [
    ['/', 'console-wrong-key'],
    ['/graphiql', 'graphiql-wrong-key'],
  ]) {
    test(`${path} says the key was refused and asks for another`, async () => {
      const page = await newPage(name);
      await page.goto(`${server.base}${path}#key=not-the-key`);
      const panel = page.locator('#key-panel');
      await panel.waitFor({ state: 'visible' });
      const message = page.locator('#key-panel .key-message');
      await message.waitFor({ state: 'visible' });
      assert.match(await message.textContent(), /refused this API key \(401 Unauthorized\)/);
      assert.equal(await page.isVisible('#key-input'), true);
      await shot(page, name);
      // The browser logs the refused call itself; nothing else may go wrong.
      const other = problems.get(name).filter((p) => !/status of 401/.test(p));
      assert.deepEqual(other, []);
      // The right key then opens the page.
      await page.fill('#key-input', KEY);
      await page.click('#key-panel button[type=submit]');
      await panel.waitFor({ state: 'hidden' });
      await page.close();
    });
  }
});

describe('offline', () => {
  test('every request the pages made stayed on 127.0.0.1', () => {
    assert.ok(requests.length > 20, `recorded ${requests.length} requests`);
    const away = requests.filter((u) => {
      const url = new URL(u);
      if (url.protocol === 'data:' || url.protocol === 'blob:') return false;
      return url.hostname !== '127.0.0.1';
    });
    assert.deepEqual(away, []);
  });
});
