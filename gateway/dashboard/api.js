// Calls to the gateway (same origin, JSON). Turns failures into two error types the views can word
// for people, keeps the connection banner up to date, and waits out a 401 until the user has
// signed in again, then retries: so whatever was going on resumes by itself.

import * as auth from './auth.js';
import * as banner from './banner.js';

/** The gateway answered with an error body `{"error": {"code", "message", ...}}`. */
export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && typeof body.error === 'object' && body.error ? body.error : {};
    super(typeof detail.message === 'string' && detail.message ? detail.message : `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = typeof detail.code === 'string' ? detail.code : `http_${status}`;
    this.detail = detail;
  }
}

/** The gateway did not answer at all (offline, DNS, connection refused or reset). */
export class NetworkError extends Error {
  constructor() {
    super('The gateway does not answer.');
    this.name = 'NetworkError';
  }
}

export const NETWORK_HELP = 'The gateway does not answer. Check your connection; nothing was lost.';
const BANNER_NETWORK = 'The gateway does not answer. Check your connection; nothing shown here is lost and the page keeps retrying.';
const BANNER_UNAVAILABLE = 'The service is temporarily unavailable. The page keeps retrying; try again in a moment.';

/**
 * Sends one request. Options: `body` (sent as JSON), `headers`, `signal`, `auth: false` for the
 * public endpoints, `token` to try a specific token without any 401 recovery (sign-in check).
 * Resolves to `{ status, data, headers }`; rejects with ApiError, NetworkError, SignedOutError or
 * the AbortError of `signal`.
 */
export async function request(method, path, options = {}) {
  const { body, signal } = options;
  for (;;) {
    const token = options.auth === false ? null : options.token ?? (await auth.tokenForRequest());
    const headers = { Accept: 'application/json', ...options.headers };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';

    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: 'no-store',
        credentials: 'same-origin',
      });
    } catch (error) {
      if (signal?.aborted) throw error;
      banner.set('network', BANNER_NETWORK);
      throw new NetworkError();
    }
    banner.clear('network');
    if (response.status === 503) banner.set('unavailable', BANNER_UNAVAILABLE);
    else banner.clear('unavailable');

    if (response.status === 401 && options.auth !== false && options.token === undefined) {
      await auth.recover(token);
      continue;
    }
    if (response.status !== 401) auth.confirmToken(token);
    const data = await readJson(response);
    if (!response.ok) throw new ApiError(response.status, data);
    return { status: response.status, data, headers: response.headers };
  }
}

export const get = (path, options) => request('GET', path, options);
export const post = (path, body, options = {}) => request('POST', path, { ...options, body });

/**
 * Checks a token before using it: 'ok', 'unverified' (the gateway does not answer; use it and
 * find out later) or 'rejected' with the gateway's reason.
 */
export async function checkToken(token) {
  try {
    await get('/queue', { token });
    return { verdict: 'ok' };
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return { verdict: 'rejected', reason: error.message };
    return { verdict: 'unverified' };
  }
}

/** A sentence for an error where no more specific wording applies. */
export function describe(error) {
  if (error instanceof NetworkError) return NETWORK_HELP;
  if (error instanceof ApiError) {
    if (error.status === 503) return 'The service is temporarily unavailable. Try again in a moment.';
    if (error.status >= 500) return `The gateway had a problem (HTTP ${error.status}). Try again in a moment.`;
    return error.message;
  }
  return 'Something unexpected went wrong. Reload the page and try again.';
}

async function readJson(response) {
  if (response.status === 204) return null;
  try {
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}
