// Who the user is: the session kept in sessionStorage, Supabase password sign-in and token refresh,
// and the one place that decides what a 401 from the gateway means (refresh, or ask to sign in again).
// Tokens are never logged.

const STORAGE_KEY = 'euglena.session';
const REFRESH_MARGIN_S = 60; // refresh this long before the access token expires
const REFRESH_RETRY_MS = 10_000; // after a network failure talking to Supabase

/** Thrown to anything waiting for a session when the user signs out instead of signing in. */
export class SignedOutError extends Error {
  constructor() {
    super('signed out');
    this.name = 'SignedOutError';
  }
}

let supabase = null; // { url, anonKey } when password sign-in is configured
let session = null; // { token, refreshToken, expiresAt (unix s) | null, email | null }
let state = 'signed-out'; // 'signed-in' | 'expired' | 'signed-out'
let waiters = []; // promises waiting for the next sign-in
let refreshTimer = 0;
let refreshing = null;
// A token from a refresh that the gateway has not accepted yet: if it rejects it, refreshing again
// would only loop, so the user is asked to sign in.
let unproven = null;
const listeners = new Set();

/** Takes the gateway's `/dashboard/config.json`; password sign-in needs both values. */
export function configure(config) {
  const url = typeof config?.supabase_url === 'string' ? config.supabase_url.trim().replace(/\/+$/, '') : '';
  const anonKey = typeof config?.supabase_anon_key === 'string' ? config.supabase_anon_key.trim() : '';
  supabase = url && anonKey ? { url, anonKey } : null;
}

export function hasPasswordSignIn() {
  return supabase !== null;
}

/** 'signed-in', 'expired' (the gateway refused the token; sign in again) or 'signed-out'. */
export function authState() {
  return state;
}

/** Calls `listener(state)` whenever the auth state changes. */
export function onAuthChange(listener) {
  listeners.add(listener);
}

/**
 * Reads a `#token=<jwt>` sign-in link and removes it from the address bar at once.
 * Returns the token, or null when the address has none.
 */
export function takeTokenFromUrl() {
  if (!location.hash.startsWith('#token=')) return null;
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  history.replaceState(null, '', location.pathname + location.search);
  return token ? cleanToken(token) : null;
}

/** Restores the session of this tab, if any. Returns true when signed in. */
export function restore() {
  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) ?? 'null');
  } catch {
    saved = null;
  }
  if (!saved || typeof saved.token !== 'string' || !saved.token) return false;
  adopt({
    token: saved.token,
    refreshToken: typeof saved.refreshToken === 'string' ? saved.refreshToken : null,
    expiresAt: Number.isFinite(saved.expiresAt) ? saved.expiresAt : null,
    email: typeof saved.email === 'string' ? saved.email : null,
  });
  return true;
}

/** A session for a pasted token (no refresh: when it expires, the user pastes a new one). */
export function sessionFromToken(raw) {
  const token = cleanToken(raw);
  return { token, refreshToken: null, expiresAt: jwtExpiry(token), email: null };
}

/**
 * Signs in with Supabase email + password. Resolves to a session (not yet in use: see `adopt`),
 * or throws an Error whose message can be shown as is.
 */
export async function passwordSignIn(email, password) {
  if (!supabase) throw new Error('Password sign-in is not configured on this gateway.');
  const body = await supabaseToken('password', { email, password });
  return sessionFromSupabase(body);
}

/** Starts using `next` as the session and wakes everything waiting for a sign-in. */
export function adopt(next) {
  session = next;
  persist();
  scheduleRefresh();
  setState('signed-in');
  const woken = waiters;
  waiters = [];
  for (const waiter of woken) waiter.resolve();
}

/** Forgets the session and tells everything waiting for a sign-in to give up. */
export function signOut() {
  session = null;
  clearTimeout(refreshTimer);
  sessionStorage.removeItem(STORAGE_KEY);
  const woken = waiters;
  waiters = [];
  for (const waiter of woken) waiter.reject(new SignedOutError());
  setState('signed-out');
}

/** The token for the next gateway request, refreshed first if it is about to expire. */
export async function tokenForRequest() {
  if (refreshing) await refreshing;
  if (session?.refreshToken && expiresWithin(REFRESH_MARGIN_S / 2)) await refresh();
  return session?.token ?? null;
}

/**
 * Called when the gateway answered 401 to a request made with `failedToken`. Resolves when a new
 * token is worth trying: after a refresh, or once the user has signed in again (which may take a
 * while: the caller just waits). Rejects with SignedOutError if the user signs out instead.
 */
export async function recover(failedToken) {
  if (state === 'signed-out') throw new SignedOutError();
  if (session && session.token !== failedToken) return; // already renewed meanwhile
  if (session?.refreshToken && failedToken !== unproven && (await refresh())) return;
  expire();
  await new Promise((resolve, reject) => waiters.push({ resolve, reject }));
}

/** The gateway accepted `token` (any answer but 401). */
export function confirmToken(token) {
  if (token && token === unproven) unproven = null;
}

function expire() {
  if (state !== 'signed-in') return;
  session = null;
  clearTimeout(refreshTimer);
  sessionStorage.removeItem(STORAGE_KEY);
  setState('expired');
}

function setState(next) {
  if (state === next) return;
  state = next;
  for (const listener of listeners) listener(state);
}

function persist() {
  try {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
  } catch {
    // Storage full or disabled: the session still works until the tab is reloaded.
  }
}

// --- Supabase refresh -------------------------------------------------------------------------

function scheduleRefresh(delayMs) {
  clearTimeout(refreshTimer);
  if (!session?.refreshToken || !supabase) return;
  let delay = delayMs;
  if (delay === undefined) {
    if (!session.expiresAt) return;
    delay = (session.expiresAt - REFRESH_MARGIN_S) * 1000 - Date.now();
  }
  refreshTimer = setTimeout(() => { refresh(); }, Math.min(Math.max(delay, 0), 2 ** 31 - 1));
}

/** Refreshes the Supabase session once, however many callers ask at the same time. */
function refresh() {
  refreshing ??= doRefresh().finally(() => { refreshing = null; });
  return refreshing;
}

async function doRefresh() {
  const before = session;
  if (!before?.refreshToken || !supabase) return false;
  let body;
  try {
    body = await supabaseToken('refresh_token', { refresh_token: before.refreshToken });
  } catch (error) {
    // A network failure is retried; a refusal means the user signs in again at the next 401.
    if (error.network && session === before) scheduleRefresh(REFRESH_RETRY_MS);
    return false;
  }
  if (session !== before) return false; // signed out or signed in anew meanwhile
  session = sessionFromSupabase(body, before.email);
  unproven = session.token;
  persist();
  scheduleRefresh();
  return true;
}

async function supabaseToken(grantType, payload) {
  let response;
  try {
    response = await fetch(`${supabase.url}/auth/v1/token?grant_type=${grantType}`, {
      method: 'POST',
      headers: { apikey: supabase.anonKey, 'Content-Type': 'application/json' },
      body: JSON.stringify(payload),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch {
    const error = new Error('The sign-in service does not answer. Check your connection and try again.');
    error.network = true;
    throw error;
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok || typeof body?.access_token !== 'string') {
    const text = body?.error_description || body?.msg || body?.message || body?.error;
    throw new Error(typeof text === 'string' && text ? text : `Sign-in failed (HTTP ${response.status}).`);
  }
  return body;
}

function sessionFromSupabase(body, email = null) {
  const expiresAt = Number.isFinite(body.expires_at)
    ? body.expires_at
    : Number.isFinite(body.expires_in) ? Math.floor(Date.now() / 1000) + body.expires_in : jwtExpiry(body.access_token);
  return {
    token: body.access_token,
    refreshToken: typeof body.refresh_token === 'string' ? body.refresh_token : null,
    expiresAt,
    email: typeof body.user?.email === 'string' ? body.user.email : email,
  };
}

function expiresWithin(seconds) {
  return Boolean(session?.expiresAt) && session.expiresAt - Date.now() / 1000 < seconds;
}

// Timers are throttled in background tabs: check again when the tab comes back.
document.addEventListener('visibilitychange', () => {
  if (!document.hidden && session?.refreshToken && expiresWithin(REFRESH_MARGIN_S)) refresh();
});

// --- Tokens -----------------------------------------------------------------------------------

function cleanToken(raw) {
  return String(raw).trim().replace(/^Bearer\s+/i, '').replace(/\s+/g, '');
}

/** The `exp` claim of a JWT, read only to know when it expires (the gateway does the verifying). */
function jwtExpiry(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(part.padEnd(Math.ceil(part.length / 4) * 4, '='))).exp;
    return Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}
