// Shared by the console and GraphiQL: the API key (kept in this tab's sessionStorage only,
// never in localStorage, cookies or the address bar), data calls that carry it as
// `Authorization: Bearer`, the WebSocket address and `connection_init` payload, and the form
// that asks for the key and says clearly when the server refused it.

const STORE = 'weir.apiKey';

/** Takes a key passed as `#key=...` (the demo prints such an address), keeps it for this tab
 * and removes it from the address bar and the history. */
export function takeKeyFromHash() {
  const m = location.hash.match(/(?:^#|&)key=([^&]*)/);
  if (!m) return;
  try {
    setKey(decodeURIComponent(m[1]));
  } catch {
    setKey(m[1]);
  }
  history.replaceState(null, '', location.pathname + location.search);
}

export const getKey = () => sessionStorage.getItem(STORE) || '';

export function setKey(key) {
  if (key) sessionStorage.setItem(STORE, key);
  else sessionStorage.removeItem(STORE);
}

/** The server refused the key (HTTP 401, WebSocket close 4401/4403). */
export class AuthError extends Error {}

/** Any other failed call: `status` 0 when the server could not be reached. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The message of any of Weir's error shapes: `{"error": {"code", "message"}}` (job API,
 * console), `{"error": code, "message"}` (memory routes), `{"errors": [{"message"}]}` (GraphQL). */
function errorOf(json) {
  if (!json || typeof json !== 'object') return {};
  if (json.error && typeof json.error === 'object') return json.error;
  if (typeof json.error === 'string') return { code: json.error, message: json.message };
  if (Array.isArray(json.errors) && json.errors.length) {
    const e = json.errors[0];
    return { code: e.extensions && e.extensions.code, message: e.message };
  }
  return {};
}

export function authHeaders() {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** A data call with the key. Resolves to the parsed JSON body; throws AuthError on 401. */
export async function api(path, { method = 'GET', body, headers = {} } = {}) {
  let res;
  try {
    res = await fetch(path, {
      method,
      body,
      headers: { ...authHeaders(), ...headers },
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'NETWORK', `cannot reach the server (${e.message})`);
  }
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  const err = errorOf(json);
  if (res.status === 401) throw new AuthError(err.message || 'unauthenticated');
  if (!res.ok) {
    throw new ApiError(res.status, err.code, err.message || text || res.statusText);
  }
  return json;
}

/** A GraphQL query over HTTP; throws on the first GraphQL error. */
export async function graphql(query, variables) {
  const r = await api('/graphql', {
    method: 'POST',
    body: JSON.stringify({ query, variables }),
    headers: { 'content-type': 'application/json' },
  });
  const err = errorOf(r);
  if (err.message) throw new ApiError(200, err.code, err.message);
  return r.data;
}

export function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/graphql/ws`;
}

/** The `connection_init` payload carrying the key. */
export function connectionParams() {
  const key = getKey();
  return key ? { authorization: `Bearer ${key}` } : {};
}

/** Close codes after which reconnecting with the same key cannot help. */
export const isAuthClose = (ev) => !!ev && (ev.code === 4401 || ev.code === 4403);

/** What the server says about this listener (open: no key needed). */
export async function info() {
  const res = await fetch('/console/info', { cache: 'no-store' });
  if (!res.ok) throw new ApiError(res.status, 'INFO', `GET /console/info answered ${res.status}`);
  return res.json();
}

export const REFUSED =
  'The server refused this API key (401 Unauthorized). Enter the key the server was started ' +
  'with (`weir serve --api-key KEY`, or one of WEIR_API_KEYS).';

/** Shows the key form in `panel` (an element holding `form.key-form`, `input`, `.key-message`)
 * with `message` (empty for none); resolves with the entered key once submitted. */
export function askForKey(panel, message) {
  const form = panel.querySelector('form');
  const input = form.querySelector('input');
  const note = panel.querySelector('.key-message');
  note.textContent = message || '';
  note.hidden = !message;
  panel.hidden = false;
  input.value = '';
  input.focus();
  return new Promise((resolve) => {
    form.onsubmit = (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      setKey(key);
      panel.hidden = true;
      form.onsubmit = null;
      resolve(key);
    };
  });
}

/** Escapes text for HTML. */
export function esc(v) {
  return String(v ?? '').replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c],
  );
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function bytes(n) {
  if (n == null || Number.isNaN(n)) return '–';
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i === 0 || v >= 100 ? 0 : 1)} ${UNITS[i]}`;
}

export function count(n) {
  return n == null ? '–' : Number(n).toLocaleString('en-US');
}

export function duration(secs) {
  if (secs == null || !Number.isFinite(secs)) return '–';
  const s = Math.round(secs);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
