// The new-task form: checks the fields, posts the task with an Idempotency-Key and words the
// gateway's refusals for people, always keeping what they typed.

import * as api from '../api.js';
import * as auth from '../auth.js';
import { byTestId, setMessage, sleep } from '../dom.js';

const MAX_MANDATE_CHARS = 8000;
const IN_USE_RETRIES = 4; // 409 idempotency_key_in_use: the first attempt is still being answered
const WAITING_FOR_SIGN_IN = 'Sign in again to send this task; it is kept.';

let els;
let onCreated;
// The key of a submission whose answer never arrived, reused if the same task is sent again.
let pending = null; // { key, mandate, maxTicks }
let sending = false;

export function init(options) {
  onCreated = options.onCreated;
  els = {
    form: byTestId('submit-form'),
    mandate: byTestId('mandate'),
    maxTicks: byTestId('max-ticks'),
    submit: byTestId('submit'),
    error: byTestId('submit-error'),
    status: document.getElementById('submit-status'),
    counter: document.getElementById('mandate-count'),
  };
  els.form.addEventListener('submit', (event) => {
    event.preventDefault();
    send();
  });
  // Ctrl+Enter / Cmd+Enter in the mandate submits; Enter in max ticks submits natively.
  els.mandate.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      els.form.requestSubmit();
    }
  });
  els.mandate.addEventListener('input', updateCounter);
  updateCounter();
  // A submission that met an expired session waits for the new sign-in, then goes through.
  auth.onAuthChange((state) => {
    if (!sending) return;
    if (state === 'expired') els.status.textContent = WAITING_FOR_SIGN_IN;
    if (state === 'signed-in') els.status.textContent = 'Submitting…';
  });
}

/** Empties the form (signed out). */
export function reset() {
  els.form.reset();
  pending = null;
  setMessage(els.error, '');
  els.status.textContent = '';
  markInvalid(null);
  updateCounter();
}

function updateCounter() {
  const chars = [...els.mandate.value].length;
  els.counter.textContent = `${chars} / ${MAX_MANDATE_CHARS}`;
  els.counter.classList.toggle('is-over', chars > MAX_MANDATE_CHARS);
}

async function send() {
  if (sending) return;
  const mandate = els.mandate.value;
  const maxTicks = readMaxTicks();
  const problem = checkFields(mandate, maxTicks);
  if (problem) {
    setMessage(els.error, problem.message);
    markInvalid(problem.field);
    problem.field.focus();
    return;
  }
  markInvalid(null);
  setMessage(els.error, '');

  const sameAsPending = pending && pending.mandate === mandate && pending.maxTicks === maxTicks;
  const key = sameAsPending ? pending.key : newKey();
  pending = { key, mandate, maxTicks };

  sending = true;
  els.submit.disabled = true;
  els.form.setAttribute('aria-busy', 'true');
  els.status.textContent = auth.authState() === 'expired' ? WAITING_FOR_SIGN_IN : 'Submitting…';
  try {
    const task = await post(key, mandate, maxTicks);
    pending = null;
    els.form.reset();
    updateCounter();
    els.status.textContent = 'Task submitted.';
    onCreated(task);
  } catch (error) {
    if (!(error instanceof api.NetworkError) && !isInUse(error)) pending = null;
    if (error?.name === 'SignedOutError') return;
    els.status.textContent = '';
    setMessage(els.error, explain(error, maxTicks));
  } finally {
    sending = false;
    els.submit.disabled = false;
    els.form.removeAttribute('aria-busy');
  }
}

async function post(key, mandate, maxTicks) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      const { data } = await api.post('/tasks', { mandate, max_ticks: maxTicks }, { headers: { 'Idempotency-Key': key } });
      return data;
    } catch (error) {
      if (!isInUse(error) || attempt >= IN_USE_RETRIES) throw error;
      await sleep(1000 * (attempt + 1));
    }
  }
}

function explain(error, maxTicks) {
  if (error instanceof api.NetworkError) return api.NETWORK_HELP;
  if (!(error instanceof api.ApiError)) return api.describe(error);
  const detail = error.detail;
  switch (error.code) {
    case 'quota_exceeded': {
      const remaining = Number.isFinite(detail.remaining) ? detail.remaining : 'few';
      return `Not enough ticks left today: ${remaining} remain (this task asks for ${maxTicks}). Lower max ticks or try tomorrow.`;
    }
    case 'too_many_active_tasks': {
      const limit = Number.isFinite(detail.limit) ? detail.limit : 'the maximum number of';
      return `You already have ${limit} tasks queued or running (the limit). Wait for one to finish or cancel one.`;
    }
    case 'unavailable':
      return 'The service is temporarily unavailable; nothing was charged. Try again in a moment.';
    case 'email_not_confirmed':
      return 'Confirm your email address first (look for the confirmation email), then submit again.';
    case 'idempotency_key_in_use':
      return 'Your previous attempt is still being processed. Wait a moment and submit again.';
    case 'idempotency_key_reused':
      return 'This submission clashed with an earlier one. Submit again to send it as a new task.';
    case 'invalid_request':
      return `The gateway refused the task: ${error.message}`;
    default:
      return api.describe(error);
  }
}

function isInUse(error) {
  return error instanceof api.ApiError && error.code === 'idempotency_key_in_use';
}

function readMaxTicks() {
  const text = els.maxTicks.value.trim();
  return /^\d+$/.test(text) ? Number(text) : NaN;
}

function checkFields(mandate, maxTicks) {
  const chars = [...mandate.trim()].length;
  if (chars === 0) return { field: els.mandate, message: 'Write a mandate: what should the agent do?' };
  if (chars > MAX_MANDATE_CHARS) {
    return { field: els.mandate, message: `The mandate is ${chars} characters; the limit is ${MAX_MANDATE_CHARS}. Shorten it.` };
  }
  if (!Number.isInteger(maxTicks) || maxTicks < 1 || maxTicks > 100) {
    return { field: els.maxTicks, message: 'Max ticks must be a whole number from 1 to 100.' };
  }
  return null;
}

function markInvalid(field) {
  for (const input of [els.mandate, els.maxTicks]) {
    if (input === field) {
      input.setAttribute('aria-invalid', 'true');
      input.setAttribute('aria-errormessage', els.error.id);
    } else {
      input.removeAttribute('aria-invalid');
      input.removeAttribute('aria-errormessage');
    }
  }
}

/** A fresh UUID v4; crypto.randomUUID exists only on secure origins (https or localhost). */
function newKey() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
