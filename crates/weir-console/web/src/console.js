// The console: ingest jobs (start, follow, cancel), memory over time, pool/bus/subscription
// figures and a live tail of graph changes. Plain DOM; every data call carries the API key.

import { createClient } from 'graphql-ws';
import {
  AuthError,
  REFUSED,
  api,
  askForKey,
  bytes,
  connectionParams,
  count,
  duration,
  esc,
  getKey,
  graphql,
  info,
  isAuthClose,
  setKey,
  takeKeyFromHash,
  wsUrl,
} from './common.js';

const $ = (id) => document.getElementById(id);
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** Timers and the WebSocket of the current session (stopped when the key is refused). */
const session = { timers: [], ws: null, stopped: true };

/** Runs `fn` now and every `ms` while the session lasts. Its failure shows in the banner until
 * it succeeds again (a server restart clears itself). */
function every(ms, fn) {
  let busy = false;
  const tick = async () => {
    if (busy || session.stopped) return;
    busy = true;
    try {
      await fn();
      problem(fn.name, '');
    } catch (e) {
      if (e instanceof AuthError) keyRefused();
      else problem(fn.name, e.message || String(e));
    } finally {
      busy = false;
    }
  };
  tick();
  session.timers.push(setInterval(tick, ms));
}

function stopSession() {
  session.stopped = true;
  problems.clear();
  problem('console', '');
  session.timers.forEach(clearInterval);
  session.timers = [];
  if (session.ws) session.ws.dispose();
  session.ws = null;
}

/** What is failing now, by source; the banner shows all of it. */
const problems = new Map();

function problem(source, message) {
  if (message) problems.set(source, message);
  else problems.delete(source);
  const el = $('fatal');
  el.textContent = [...new Set(problems.values())].join(' · ');
  el.hidden = problems.size === 0;
}

const showFatal = (message) => problem('console', message);

let asking = false;
async function keyRefused(message = REFUSED) {
  stopSession();
  if (asking) return;
  asking = true;
  $('main').hidden = true;
  $('change-key').hidden = true;
  setKey('');
  await askForKey($('key-panel'), message);
  asking = false;
  start();
}

let serverInfo = null;

async function boot() {
  takeKeyFromHash();
  try {
    serverInfo = await info();
  } catch (e) {
    showFatal(`The console cannot reach the server: ${e.message}. Is it running?`);
    return;
  }
  $('service').textContent = `${serverInfo.service} ${serverInfo.version}`;
  document.title = `Weir console · ${serverInfo.service}`;
  $('change-key').onclick = () => keyRefused('');
  every5sHealth();
  if (serverInfo.auth_required && !getKey()) {
    await askForKey($('key-panel'), '');
  }
  start();
}

/** Checks the key with one cheap call, then starts every section. */
async function start() {
  showFatal('');
  try {
    await api('/api/console/figures');
  } catch (e) {
    if (e instanceof AuthError) {
      keyRefused();
      return;
    }
    showFatal(`The server did not answer the console: ${e.message}`);
  }
  session.stopped = false;
  $('main').hidden = false;
  $('change-key').hidden = !serverInfo.auth_required;
  if (serverInfo.jobs) startJobs();
  if (serverInfo.memory) startMemory();
  every(2000, refreshFigures);
  startTail();
}

// ---- health (open: no key) ------------------------------------------------------------------

function every5sHealth() {
  const tick = async () => {
    try {
      const res = await fetch('/health', { cache: 'no-store' });
      const h = await res.json();
      const parts = Object.entries(h.components || {}).map(
        ([name, c]) =>
          `<span class="pill ${esc(c.status)}" title="${esc(c.detail || c.status)}">${esc(name)} ${esc(c.status)}</span>`,
      );
      $('health').innerHTML = parts.join('');
    } catch {
      $('health').innerHTML = '<span class="pill down">server unreachable</span>';
    }
  };
  tick();
  setInterval(tick, 5000);
}

// ---- jobs -----------------------------------------------------------------------------------

const JOBS_QUERY = `{ ingestJobs { jobId state bytesRead bytesTotal recordsPerSec etaSecs underPressure } }`;
/** What a job's latest progress event said, by job id (bytesTotal kept once known: the final
 * event of a job does not repeat it). */
const progress = new Map();

function startJobs() {
  $('jobs').hidden = false;
  const form = $('job-form');
  let validateTimer = null;
  const revalidate = () => {
    clearTimeout(validateTimer);
    validateTimer = setTimeout(validateMapping, 250);
  };
  $('job-mapping').oninput = revalidate;
  $('job-prefix').oninput = revalidate;
  $('job-file').onchange = updateStartButton;
  $('mapping-file').onchange = async () => {
    const f = $('mapping-file').files[0];
    if (!f) return;
    $('job-mapping').value = await f.text();
    validateMapping();
  };
  form.onsubmit = (e) => {
    e.preventDefault();
    upload();
  };
  $('job-list').onclick = async (e) => {
    const b = e.target.closest('button[data-cancel]');
    if (!b) return;
    b.disabled = true;
    try {
      await api(`/jobs/${encodeURIComponent(b.dataset.cancel)}`, { method: 'DELETE' });
    } catch (err) {
      if (err instanceof AuthError) return keyRefused();
      $('job-message').textContent = `Cancel failed: ${err.message}`;
    }
    refreshJobs();
  };
  if ($('job-mapping').value) validateMapping();
  every(1000, refreshJobs);
}

let mappingValid = false;

function updateStartButton() {
  $('job-start').disabled = !(mappingValid && $('job-file').files.length);
}

async function validateMapping() {
  const mapping = $('job-mapping').value;
  const out = $('mapping-verdict');
  mappingValid = false;
  updateStartButton();
  if (!mapping.trim()) {
    out.className = 'span verdict';
    out.textContent = '';
    return;
  }
  let v;
  try {
    v = await api('/api/mapping/validate', {
      method: 'POST',
      body: JSON.stringify({ mapping, label_prefix: $('job-prefix').value.trim() }),
      headers: { 'content-type': 'application/json' },
    });
  } catch (e) {
    if (e instanceof AuthError) return keyRefused();
    out.className = 'span verdict bad';
    out.textContent = `Could not validate the mapping: ${e.message}`;
    return;
  }
  if ($('job-mapping').value !== mapping) return; // typed on meanwhile: a newer check runs
  if (v.valid) {
    mappingValid = true;
    const nodes = v.nodes.map((n) => `${n.label} (key ${n.key.join(', ')})`).join('; ');
    const rels = v.relationships.map((r) => `${r.type} (${r.start} → ${r.end})`).join('; ');
    out.className = 'span verdict ok';
    out.innerHTML = `✓ Valid mapping. Nodes: ${esc(nodes || 'none')}. Relationships: ${esc(rels || 'none')}.`;
  } else {
    out.className = 'span verdict bad';
    out.innerHTML = `✗ Invalid mapping:<ul>${v.errors
      .map(
        (e) =>
          `<li>${e.line != null ? `line ${e.line}, ` : ''}<code>${esc(e.field)}</code>: ${esc(e.message)}</li>`,
      )
      .join('')}</ul>`;
  }
  updateStartButton();
}

/** The format to send with an upload: the one chosen, else from the file's name (the server
 * spools an upload under a name of its own, so it cannot tell from the name). */
function formatFor(file) {
  const chosen = $('job-format').value;
  if (chosen) return chosen;
  const name = file.name.toLowerCase().replace(/\.gz$/, '');
  if (/\.(jsonl|ndjson|json)$/.test(name)) return 'jsonl';
  if (/\.(csv|tsv|txt)$/.test(name)) return 'csv';
  return '';
}

function upload() {
  const file = $('job-file').files[0];
  if (!file || !mappingValid) return;
  const q = new URLSearchParams({ mapping: $('job-mapping').value });
  const format = formatFor(file);
  if (format) q.set('format', format);
  const prefix = $('job-prefix').value.trim();
  if (prefix) q.set('label_prefix', prefix);
  const id = $('job-id').value.trim();
  if (id) q.set('id', id);
  const bar = $('upload-progress');
  const msg = $('job-message');
  const button = $('job-start');
  button.disabled = true;
  bar.hidden = false;
  bar.value = 0;
  msg.textContent = `Uploading ${file.name} (${bytes(file.size)})…`;
  // XMLHttpRequest, not fetch: it reports upload progress.
  const xhr = new XMLHttpRequest();
  xhr.open('POST', `/jobs/upload?${q}`);
  const key = getKey();
  if (key) xhr.setRequestHeader('Authorization', `Bearer ${key}`);
  xhr.setRequestHeader('content-type', 'application/octet-stream');
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total;
  };
  xhr.onloadend = () => {
    bar.hidden = true;
    updateStartButton();
    let body = null;
    try {
      body = JSON.parse(xhr.responseText);
    } catch {
      body = null;
    }
    if (xhr.status === 401) return keyRefused();
    if (xhr.status === 202 && body) {
      msg.textContent = `Job ${body.id} started.`;
      $('start-job').open = false;
      $('job-file').value = '';
      updateStartButton();
      refreshJobs();
    } else if (xhr.status === 0) {
      msg.textContent = 'Upload failed: the server could not be reached.';
    } else {
      const m = body && body.error ? body.error.message : xhr.statusText;
      msg.textContent = `Upload refused (${xhr.status}): ${m}`;
    }
  };
  xhr.send(file);
}

/** Whether the last list had a job still going (only then are rates and ETAs fetched). */
let anyLive = true;

async function refreshJobs() {
  const [list, gql] = await Promise.all([
    api('/jobs'),
    anyLive
      ? graphql(JOBS_QUERY).catch((e) => {
          if (e instanceof AuthError) throw e;
          return { ingestJobs: [] }; // progress figures are extras; the list stands alone
        })
      : { ingestJobs: [] },
  ]);
  anyLive = (list.jobs || []).some((j) => !TERMINAL.has(j.state));
  for (const p of gql.ingestJobs || []) {
    const prev = progress.get(p.jobId);
    progress.set(p.jobId, {
      ...p,
      bytesTotal: p.bytesTotal ?? (prev ? prev.bytesTotal : null),
    });
  }
  renderJobs(list.jobs || []);
}

function percent(job, p) {
  if (job.state === 'completed') return 100;
  const total = p && p.bytesTotal;
  if (!total) return null;
  return Math.min(100, (100 * job.bytes_read) / total);
}

let jobsRendered = false;

function renderJobs(jobs) {
  const el = $('job-list');
  if (!jobsRendered) {
    // The form starts open only while there is nothing to follow yet.
    jobsRendered = true;
    $('start-job').open = jobs.length === 0;
  }
  if (!jobs.length) {
    el.innerHTML = '<p class="muted">No jobs yet. Start one above, or with <code>POST /jobs</code>.</p>';
    return;
  }
  jobs.sort((a, b) => (a.submitted_at < b.submitted_at ? 1 : -1));
  el.innerHTML = jobs
    .map((j) => {
      const p = progress.get(j.id);
      const pct = percent(j, p);
      const live = !TERMINAL.has(j.state);
      const shown = pct == null ? 'size unknown' : `${pct.toFixed(pct === 100 ? 0 : 1)} %`;
      const rate = live && p ? `${count(Math.round(p.recordsPerSec))} records/s` : '–';
      const eta = live && p && p.etaSecs != null ? duration(p.etaSecs) : '–';
      const pressure = live && p && p.underPressure ? '<span class="pill warning">memory pressure</span>' : '';
      return `<article class="job" data-job-id="${esc(j.id)}" data-state="${esc(j.state)}">
  <div class="job-head">
    <span class="id" title="${esc(j.id)}">${esc(j.id)}</span>
    <span class="pill ${esc(j.state)}">${esc(j.state)}</span>${pressure}
    <span class="input">${esc(j.input)} · ${esc(new Date(j.submitted_at).toLocaleString())}</span>
    ${live ? `<button type="button" class="danger" data-cancel="${esc(j.id)}">Cancel</button>` : ''}
  </div>
  <div class="bar ${esc(j.state)} ${pct == null ? 'unknown' : ''}" role="progressbar" aria-label="progress of job ${esc(j.id)}"
    aria-valuemin="0" aria-valuemax="100" ${pct == null ? '' : `aria-valuenow="${pct.toFixed(1)}"`}>
    <span style="width:${pct == null ? 0 : pct}%"></span><b>${shown}</b></div>
  <div class="job-figures">
    <span>committed <b data-field="records_committed">${count(j.records_committed)}</b></span>
    <span>read <b data-field="records_read">${count(j.records_read)}</b></span>
    <span>dead letters <b data-field="records_dead_lettered">${count(j.records_dead_lettered)}</b></span>
    <span>bytes <b data-field="bytes_read">${bytes(j.bytes_read)}</b>${p && p.bytesTotal ? ` of ${bytes(p.bytesTotal)}` : ''}</span>
    <span>rate <b>${rate}</b></span>
    <span>ETA <b>${eta}</b></span>
  </div>
  ${j.error ? `<div class="job-error">Error: ${esc(j.error)}</div>` : ''}
</article>`;
    })
    .join('');
}

// ---- memory ---------------------------------------------------------------------------------

/** Samples shown, oldest first, merged by timestamp from successive history pages. */
let samples = [];
let memoryStats = null;
let leak = null;
let lastFetch = 0;

let resizeBound = false;

function startMemory() {
  $('memory').hidden = false;
  every(2000, refreshMemory);
  if (!resizeBound) window.addEventListener('resize', () => drawChart());
  resizeBound = true;
}

async function refreshMemory() {
  const interval = memoryStats ? memoryStats.interval_seconds : 2;
  // The first call takes the whole history; later ones only what is new (plus a margin).
  const limit = lastFetch
    ? Math.min(1000, Math.ceil((Date.now() - lastFetch) / 1000 / interval) + 3)
    : 1000;
  const [hist, stats, leakStatus] = await Promise.all([
    api(`/api/memory/history?limit=${limit}`),
    api('/api/memory/stats'),
    api('/api/memory/leak-detection'),
  ]);
  lastFetch = Date.now();
  memoryStats = stats;
  leak = leakStatus;
  const newest = samples.length ? samples[samples.length - 1].timestamp_ms : -Infinity;
  for (const s of hist.samples) if (s.timestamp_ms > newest) samples.push(s);
  if (samples.length > hist.capacity) samples = samples.slice(samples.length - hist.capacity);
  renderMemoryStats();
  drawChart();
}

const rssOf = (s) => s.rss_bytes ?? s.used_bytes;

function renderMemoryStats() {
  const s = memoryStats;
  const cur = s.current || {};
  const a = leak ? leak.latest : null;
  const slope = a && a.verdict !== 'insufficient_data' ? `${a.slope_bytes_per_hour >= 0 ? '+' : '−'}${bytes(Math.abs(a.slope_bytes_per_hour))}/h, R² ${a.r_squared.toFixed(2)}` : 'not enough samples yet';
  const items = [
    ['RSS', bytes(rssOf(cur))],
    ['used / limit', cur.limit_bytes ? `${bytes(cur.used_bytes)} / ${bytes(cur.limit_bytes)} (${(100 * cur.ratio).toFixed(0)}\u00a0%)` : `${bytes(cur.used_bytes)} (no limit)`],
    ['pressure', `<span class="pill ${esc(s.level)}">${esc(s.level)}</span>`],
    ['leak verdict', `<span class="pill ${esc(s.leak_verdict)}">${esc(s.leak_verdict.replace('_', ' '))}</span>`],
    ['trend', esc(slope)],
    ['peak RSS', bytes(s.peak_rss_bytes)],
    ['samples', `${count(s.history_len)} every ${s.interval_seconds} s`],
  ];
  $('memory-stats').innerHTML = items
    .map(([k, v]) => `<div><dt>${esc(k)}</dt><dd>${k === 'pressure' || k === 'leak verdict' || k === 'trend' ? v : esc(v)}</dd></div>`)
    .join('');
}

function drawChart() {
  const svg = $('memory-chart');
  const W = Math.max(280, svg.clientWidth || 600);
  const H = svg.clientHeight || 220;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const pad = { l: 64, r: 10, t: 10, b: 22 };
  const data = samples;
  svg.dataset.samples = String(data.length);
  svg.dataset.lastTimestamp = data.length ? String(data[data.length - 1].timestamp_ms) : '';
  if (data.length < 2) {
    svg.innerHTML = `<text x="${pad.l}" y="${H / 2}">collecting samples…</text>`;
    return;
  }
  const t0 = data[0].timestamp_ms;
  const t1 = data[data.length - 1].timestamp_ms;
  const limits = data.map((s) => s.limit_bytes).filter((v) => v != null);
  const maxLimit = limits.length ? Math.max(...limits) : 0;
  const maxUsed = Math.max(...data.map(rssOf));
  const top = Math.max(maxUsed, maxLimit) * 1.08 || 1;
  const x = (t) => pad.l + ((W - pad.l - pad.r) * (t - t0)) / Math.max(1, t1 - t0);
  const y = (v) => H - pad.b - ((H - pad.t - pad.b) * v) / top;
  const grid = [0, 0.25, 0.5, 0.75, 1]
    .map((f) => {
      const v = top * f;
      return `<line x1="${pad.l}" x2="${W - pad.r}" y1="${y(v)}" y2="${y(v)}"/><text x="${pad.l - 6}" y="${y(v) + 4}" text-anchor="end">${bytes(v)}</text>`;
    })
    .join('');
  const pts = (f) =>
    data
      .filter((s) => f(s) != null)
      .map((s) => `${x(s.timestamp_ms).toFixed(1)},${y(f(s)).toFixed(1)}`)
      .join(' ');
  let thresholds = '';
  if (maxLimit && memoryStats) {
    const th = memoryStats.thresholds;
    thresholds = [th.warning, th.critical]
      .map((r) => `<line class="threshold" x1="${pad.l}" x2="${W - pad.r}" y1="${y(r * maxLimit)}" y2="${y(r * maxLimit)}"/>`)
      .join('');
  }
  const span = (t1 - t0) / 1000;
  const last = data[data.length - 1];
  svg.innerHTML = `<g class="grid">${grid}</g>${thresholds}
<text x="${pad.l}" y="${H - 6}">−${duration(span)}</text><text x="${W - pad.r}" y="${H - 6}" text-anchor="end">now</text>
${limits.length ? `<polyline class="limit" points="${pts((s) => s.limit_bytes)}"/>` : ''}
<polyline class="used" points="${pts(rssOf)}"/>
<circle cx="${x(last.timestamp_ms)}" cy="${y(rssOf(last))}" r="3" fill="currentColor" class="used-dot"/>`;
  $('memory-legend').innerHTML = `<span><i></i>RSS</span>${limits.length ? '<span><i class="limit"></i>limit</span><span>dotted: warning / critical</span>' : '<span>no memory limit set</span>'}`;
}

// ---- figures --------------------------------------------------------------------------------

const LABELS = {
  pool: 'graph pool',
  bus: 'bus',
  gateway: 'gateway',
  max_size: 'max sessions',
  size: 'sessions',
  in_use: 'in use',
  sessions_created: 'sessions opened',
  connect_failures: 'connect failures',
  acquire_timeouts: 'acquire timeouts',
  publish_errors: 'publish errors',
  progress_published: 'progress published',
  progress_dropped: 'progress dropped',
  delivered_events: 'events delivered',
  dropped_events: 'events dropped',
  completed_ttl: 'ended by TTL',
  completed_lagged: 'ended as too slow',
  rejected_limit: 'refused by limits',
};

/** The order figures are shown in (the server's JSON objects come sorted by name); anything
 * not listed follows in the server's order. */
const ORDER = [
  'pool', 'gateway', 'bus',
  'ready', 'size', 'max_size', 'in_use', 'idle', 'waiting', 'circuit', 'sessions_created',
  'connect_failures', 'acquire_timeouts',
  'sockets', 'subscriptions', 'created', 'delivered_events', 'dropped_events', 'completed_ttl',
  'completed_lagged', 'rejected_limit',
  'connected', 'published', 'consumed', 'lag', 'duplicates', 'publish_errors', 'redelivered',
  'progress_published', 'progress_dropped',
];
const rank = ([k]) => (ORDER.includes(k) ? ORDER.indexOf(k) : ORDER.length);
const ordered = (obj) => Object.entries(obj).sort((a, b) => rank(a) - rank(b));

function figureValue(v) {
  if (typeof v === 'number') return count(v);
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  return String(v);
}

async function refreshFigures() {
  const f = await api('/api/console/figures');
  $('figure-list').innerHTML = ordered(f)
    .map(
      ([group, values]) => `<div class="figure-group" data-group="${esc(group)}"><h3>${esc(LABELS[group] || group)}</h3><dl class="figures">${ordered(values)
        .map(([k, v]) => `<div><dt>${esc(LABELS[k] || k.replace(/_/g, ' '))}</dt><dd data-figure="${esc(`${group}.${k}`)}">${esc(figureValue(v))}</dd></div>`)
        .join('')}</dl></div>`,
    )
    .join('');
}

// ---- change tail ----------------------------------------------------------------------------

const TAIL_QUERY = `subscription Tail($labels: [String!], $types: [String!], $since: Int, $sinceIndex: Int) {
  graphChanges(labels: $labels, types: $types, since: $since, sinceIndex: $sinceIndex) {
    seq index kind label key operation jobId committedAtMs missed
    start { label key } end { label key }
  }
}`;
const MAX_ROWS = 200;
// `lastSeq`/`lastIndex`: the last change received, where a resumed subscription continues.
const tail = { unsubscribe: null, paused: false, received: 0, missed: 0, lastSeq: null, lastIndex: null, pending: [], flush: null };

function tailStatus(text, cls) {
  const el = $('tail-status');
  el.textContent = text;
  el.className = `pill ${cls}`;
}

function listOf(v) {
  const items = v
    .split(/[\s,]+/)
    .map((s) => s.trim())
    .filter(Boolean);
  return items.length ? items : null;
}

function startTail() {
  session.ws = createClient({
    url: wsUrl(),
    connectionParams,
    lazy: false,
    retryAttempts: Infinity,
    shouldRetry: (ev) => !isAuthClose(ev),
    on: {
      connecting: () => tailStatus('connecting', 'connecting'),
      connected: () => tailStatus('live', 'live'),
      closed: (ev) => {
        if (session.stopped) return;
        if (isAuthClose(ev)) {
          keyRefused();
          return;
        }
        tailStatus('reconnecting', 'paused');
      },
    },
  });
  $('tail-form').onsubmit = (e) => {
    e.preventDefault();
    tail.lastSeq = null;
    tail.lastIndex = null;
    // Rows of the old filter not drawn yet are dropped: what shows from now on matches the new one.
    tail.pending = [];
    subscribeTail();
  };
  $('tail-pause').onclick = () => {
    tail.paused = !tail.paused;
    $('tail-pause').textContent = tail.paused ? 'Resume' : 'Pause';
  };
  $('tail-clear').onclick = () => {
    tail.pending = [];
    $('tail-rows').innerHTML = '';
  };
  subscribeTail();
}

function subscribeTail() {
  if (tail.unsubscribe) tail.unsubscribe();
  const client = session.ws;
  if (!client) return;
  const variables = {
    labels: listOf($('tail-labels').value),
    types: listOf($('tail-types').value),
    // After the subscription ended (its TTL ran out, the server found this tail too slow),
    // catch up from the last change received, the rest of its batch included.
    since: tail.lastSeq,
    sinceIndex: tail.lastSeq === null ? null : tail.lastIndex,
  };
  let ended = false;
  tail.unsubscribe = client.subscribe(
    { query: TAIL_QUERY, variables },
    {
      next: ({ data, errors }) => {
        if (errors && errors.length) {
          const code = errors[0].extensions && errors[0].extensions.code;
          if (code === 'SINCE_TOO_OLD' || code === 'SINCE_AHEAD') {
            tail.lastSeq = null;
            tail.lastIndex = null;
            addRow(`Resumed without catch-up: ${errors[0].message}`);
          } else {
            tailStatus('error', 'error');
            addRow(`Subscription refused: ${errors[0].message}`);
          }
          return;
        }
        if (data && data.graphChanges) receive(data.graphChanges);
      },
      error: (e) => {
        if (session.stopped || ended) return;
        if (isAuthClose(e)) return; // `closed` handles it
        const first = Array.isArray(e) ? e[0] : null;
        const code = first && first.extensions ? first.extensions.code : null;
        if (code === 'SLOW_CONSUMER') {
          // The server let this tail go for falling behind; nothing was skipped: resume from
          // the last change received.
          tail.missed += 1;
          addRow(`The server disconnected this tail for falling behind; resuming from seq ${tail.lastSeq}…`);
          setTimeout(() => !session.stopped && !ended && subscribeTail(), 500);
          return;
        }
        if (code === 'CHANGES_LOST') {
          // Changes were lost before they reached the gateway: start again from now.
          tail.missed += 1;
          tail.lastSeq = null;
          tail.lastIndex = null;
          addRow(`Changes were lost before reaching the gateway (${first.message}); following live changes again.`);
          setTimeout(() => !session.stopped && !ended && subscribeTail(), 500);
          return;
        }
        tailStatus('error', 'error');
        const m = e && e.message ? e.message : Array.isArray(e) ? e.map((x) => x.message).join('; ') : 'connection lost';
        addRow(`Subscription ended: ${m}. Retrying…`);
        setTimeout(() => !session.stopped && !ended && subscribeTail(), 3000);
      },
      complete: () => {
        // The TTL ran out (or the server is going away): subscribe again from where we were.
        if (session.stopped || ended) return;
        setTimeout(() => !session.stopped && !ended && subscribeTail(), 200);
      },
    },
  );
  const unsubscribe = tail.unsubscribe;
  tail.unsubscribe = () => {
    ended = true;
    unsubscribe();
  };
}

function receive(c) {
  tail.received += 1;
  if (c.seq) {
    tail.lastSeq = c.seq;
    tail.lastIndex = c.index;
  }
  if (c.missed) {
    tail.missed += c.missed;
    tail.pending.push({ missed: c.missed });
  }
  if (!tail.paused) tail.pending.push(c);
  if (!tail.flush) tail.flush = setTimeout(flushTail, 200);
}

function addRow(message) {
  tail.pending.push({ note: message });
  if (!tail.flush) tail.flush = setTimeout(flushTail, 0);
}

function flushTail() {
  tail.flush = null;
  $('tail-count').textContent = count(tail.received);
  const m = $('tail-missed');
  m.hidden = tail.missed === 0;
  m.textContent = ` · ${count(tail.missed)} interruption${tail.missed === 1 ? '' : 's'} (see the notes below)`;
  const rows = tail.pending.splice(0).slice(-MAX_ROWS).reverse();
  if (!rows.length) return;
  const html = rows
    .map((c) => {
      if (c.note) return `<tr class="missed"><td colspan="6">${esc(c.note)}</td></tr>`;
      if (c.missed) return `<tr class="missed" data-missed="${c.missed}"><td colspan="6">⚠ ${count(c.missed)} changes missed here (reported by an older server)</td></tr>`;
      const t = new Date(c.committedAtMs).toLocaleTimeString();
      const key = c.kind === 'RELATIONSHIP' && c.start && c.end ? `${c.start.label} ${c.start.key} → ${c.end.label} ${c.end.key}` : c.key;
      return `<tr><td>${esc(t)}</td><td>${esc(c.seq)}</td><td>${esc(c.operation.toLowerCase())} ${c.kind === 'NODE' ? 'node' : 'rel'}</td><td>${esc(c.label)}</td><td class="key" title="${esc(key)}">${esc(key)}</td><td title="${esc(c.jobId)}">${esc(c.jobId.slice(0, 8))}</td></tr>`;
    })
    .join('');
  const body = $('tail-rows');
  body.insertAdjacentHTML('afterbegin', html);
  while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
}

boot().catch((e) => showFatal(`The console failed to start: ${e.message}`));
