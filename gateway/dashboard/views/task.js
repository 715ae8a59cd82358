// The task page: follows the task's event stream and shows its state, ticks, usage and result.
// Nothing shown is thrown away when the stream drops; a reconnect only adds to it (or replaces the
// task fields with a fresh snapshot).

import * as api from '../api.js';
import * as auth from '../auth.js';
import { announce, byTestId, h, isWebUrl, linkOrText, setMessage } from '../dom.js';
import { followEvents } from '../events.js';
import { count, isFinished, statusClass, statusHelp } from '../format.js';

let els;
// The open task: { id, task, follower, ticks: Map<n, li>, seenUpTo, stream, shownStatus, cancelRequested }
let view = null;

export function init() {
  els = {
    section: byTestId('task-view'),
    heading: document.getElementById('task-heading'),
    id: document.getElementById('task-id'),
    status: byTestId('task-status'),
    help: document.getElementById('status-help'),
    pill: document.getElementById('stream-pill'),
    streamState: byTestId('stream-state'),
    streamNote: document.getElementById('stream-note'),
    missing: document.getElementById('task-missing'),
    body: document.getElementById('task-body'),
    mandate: document.getElementById('task-mandate'),
    bar: document.getElementById('tick-bar'),
    progress: byTestId('tick-progress'),
    usage: {
      model_calls: byTestId('usage-model-calls'),
      prompt_tokens: byTestId('usage-tokens-in'),
      completion_tokens: byTestId('usage-tokens-out'),
      searches: byTestId('usage-searches'),
      visits: byTestId('usage-visits'),
    },
    cancel: byTestId('cancel'),
    message: document.getElementById('task-message'),
    result: byTestId('result'),
    resultHeading: document.getElementById('result-heading'),
    outcome: document.getElementById('result-outcome'),
    error: byTestId('task-error'),
    summaryBlock: document.getElementById('summary-block'),
    summary: byTestId('summary'),
    deliverablesBlock: document.getElementById('deliverables-block'),
    deliverables: document.getElementById('deliverables'),
    sourcesBlock: document.getElementById('sources-block'),
    sources: document.getElementById('sources'),
    ticksCard: document.getElementById('ticks-card'),
    ticks: byTestId('ticks'),
    ticksEmpty: document.getElementById('ticks-empty'),
  };
  els.cancel.addEventListener('click', cancel);
}

/** Shows task `id` and follows its events (nothing happens if it is already open). */
export function open(id) {
  if (view?.id === id) return;
  close();
  const current = { id, task: null, follower: null, ticks: new Map(), seenUpTo: 0, stream: null, shownStatus: null, cancelRequested: false };
  view = current;
  resetDom(id);
  els.section.hidden = false;
  const mine = (fn) => (...args) => (view === current ? fn(...args) : undefined);
  // The task as it stands, then its whole log from the start, so every tick is listed whenever the page
  // is opened. Without the task (the gateway did not answer), the stream starts with a snapshot instead.
  api.get(`/tasks/${encodeURIComponent(id)}`).then(
    ({ data }) => {
      if (view !== current) return;
      if (isTask(data)) setTask(data, true);
      follow(current, mine, isTask(data) ? '0-0' : null);
    },
    (error) => {
      if (view !== current || error?.name === 'SignedOutError') return;
      if (error?.status === 404) showFailure({ status: 404, body: error.body });
      else follow(current, mine, null);
    },
  );
}

function follow(current, mine, lastEventId) {
  const id = current.id;
  current.follower = followEvents(`/tasks/${encodeURIComponent(id)}/events`, {
    getToken: () => auth.tokenForRequest(),
    onUnauthorized: async (token) => {
      mine(setStream)('reconnecting', { signIn: true });
      await auth.recover(token);
    },
    onOpen: mine(() => setStream('live')),
    onEvent: mine(handle),
    onRetry: mine(({ delayMs }) => setStream('reconnecting', { delayMs })),
    onEnd: mine(() => setStream('ended')),
    onFail: mine(showFailure),
    isDone: () => view === current && isFinished(current.task?.status),
  }, { lastEventId });
}

/** Stops following the open task (the user left the page). */
export function close() {
  view?.follower?.stop();
  view = null;
  els.section.hidden = true;
}

/** Moves the focus to the page heading (after navigation). */
export function focus() {
  els.heading.focus();
}

// --- Events -----------------------------------------------------------------------------------

function handle({ type, data: raw }) {
  const data = raw && typeof raw === 'object' ? raw : {};
  const task = view.task;
  switch (type) {
    case 'snapshot':
      if (isTask(data)) {
        noteUnseenTicks(data.tick);
        setTask(data, true);
      }
      break;
    case 'created':
      if (Number.isFinite(data.max_ticks)) patch({ max_ticks: data.max_ticks });
      break;
    case 'accepted':
      if (task?.status === 'in_queue') patch({ status: 'in_progress' });
      if (data.attempt > 1) addNote(`An agent picked the task up again (attempt ${data.attempt}).`);
      break;
    case 'tick':
      addTick(data);
      if (task) {
        // A replayed older tick never rolls the usage back.
        const latest = (Number(data.tick) || 0) >= (task.tick ?? 0);
        patch({
          tick: Math.max(task.tick ?? 0, Number(data.tick) || 0),
          usage: latest && data.usage && typeof data.usage === 'object' ? data.usage : task.usage,
          status: task.status === 'in_queue' ? 'in_progress' : task.status,
        });
      }
      break;
    case 'memory':
      addMemory(data);
      break;
    case 'cancelling':
      if (task && !isFinished(task.status)) patch({ status: 'cancelling' });
      break;
    case 'completed':
    case 'failed':
    case 'cancelled':
      setTask(isTask(data) ? data : { ...task, status: type }, true);
      break;
    default:
      break; // an event this page does not know yet
  }
}

/**
 * Shows `next` as the task. Only the stream is `authoritative`: an answer to our own cancel
 * request may be older than what the stream already said, so it never un-finishes a task.
 */
function setTask(next, authoritative) {
  const task = view.task;
  if (!authoritative && task) {
    if (isFinished(task.status) && !isFinished(next.status)) return;
    next = { ...next, tick: Math.max(task.tick ?? 0, next.tick ?? 0) };
  }
  view.task = next;
  render();
}

function patch(fields) {
  if (!view.task) return;
  view.task = { ...view.task, ...fields };
  render();
}

// --- Rendering --------------------------------------------------------------------------------

function resetDom(id) {
  els.section.dataset.taskId = id;
  els.section.removeAttribute('data-status');
  els.section.classList.remove('is-reconnecting');
  els.id.textContent = id;
  els.status.textContent = '…';
  els.status.className = 'badge status-unknown';
  els.help.textContent = 'Loading the task…';
  els.missing.hidden = true;
  els.body.hidden = false;
  els.ticksCard.hidden = false;
  els.mandate.textContent = '';
  els.bar.max = 1;
  els.bar.value = 0;
  els.progress.textContent = '– / –';
  for (const cell of Object.values(els.usage)) cell.textContent = '0';
  els.cancel.hidden = true;
  setMessage(els.message, '');
  els.result.hidden = true;
  els.ticks.replaceChildren();
  els.ticksEmpty.hidden = false;
  setStream('live');
  document.title = 'Task · Euglena';
}

function render() {
  const task = view.task;
  const status = String(task.status);
  els.section.dataset.status = status;
  els.status.textContent = status;
  els.status.className = `badge ${statusClass(status)}`;
  els.help.textContent = statusHelp(status);
  if (view.shownStatus !== null && view.shownStatus !== status) announce(`Task status: ${statusHelp(status)}`);
  view.shownStatus = status;
  document.title = `${status} · Task · Euglena`;

  els.mandate.textContent = String(task.mandate ?? '');
  const max = Number.isFinite(task.max_ticks) && task.max_ticks > 0 ? task.max_ticks : 1;
  els.bar.max = max;
  els.bar.value = Math.min(Number(task.tick) || 0, max);
  els.progress.textContent = `${count(task.tick)} / ${count(task.max_ticks)}`;
  const usage = task.usage ?? {};
  for (const [field, cell] of Object.entries(els.usage)) cell.textContent = count(usage[field] ?? 0);

  const finished = isFinished(status);
  const stopping = status === 'cancelling' || view.cancelRequested;
  // A button that is disabled or hidden drops the keyboard focus: keep it somewhere useful.
  const hadFocus = document.activeElement === els.cancel && (finished || stopping);
  els.cancel.hidden = finished;
  els.cancel.disabled = stopping;
  els.cancel.textContent = stopping ? 'Cancelling…' : 'Cancel task';
  renderResult(task);
  if (hadFocus) (finished ? els.resultHeading : els.heading).focus();
}

function renderResult(task) {
  const finished = isFinished(task.status);
  els.result.hidden = !finished;
  if (!finished) return;
  const result = task.result && typeof task.result === 'object' ? task.result : null;

  let outcome;
  if (task.status === 'completed') {
    outcome = result?.success === false ? 'Completed, but the agent reports that it did not succeed.' : 'Completed successfully.';
  } else if (task.status === 'failed') {
    outcome = 'The task failed.';
  } else {
    const gathered = Boolean(result?.summary) || result?.deliverables?.length > 0 || result?.sources?.length > 0;
    outcome = gathered ? 'Cancelled. Below is what was gathered before the cancel.' : 'Cancelled before anything was gathered.';
  }
  if (Number.isFinite(result?.ticks_used)) outcome += ` Used ${result.ticks_used} ticks.`;
  els.outcome.textContent = outcome;
  els.outcome.className = `outcome ${task.status === 'completed' && result?.success !== false ? 'is-success' : 'is-failure'}`;

  const error = typeof task.error === 'string' && task.error ? task.error : null;
  setMessage(els.error, error ?? (task.status === 'failed' ? 'No reason was given.' : ''));

  const summary = typeof result?.summary === 'string' ? result.summary : '';
  els.summaryBlock.hidden = !summary;
  els.summary.textContent = summary;

  const deliverables = Array.isArray(result?.deliverables) ? result.deliverables : [];
  els.deliverablesBlock.hidden = deliverables.length === 0;
  els.deliverables.replaceChildren(...deliverables.map((item) =>
    h('li', { testid: 'deliverable', className: 'deliverable' }, h('pre', { text: String(item) }))));

  const sources = Array.isArray(result?.sources) ? result.sources : [];
  els.sourcesBlock.hidden = sources.length === 0;
  els.sources.replaceChildren(...sources.map((url) => h('li', {}, linkOrText(url, { testid: 'source', className: 'source' }))));
}

function addTick(data) {
  const n = Number(data.tick);
  if (!Number.isFinite(n)) return;
  const action = String(data.action ?? 'INVALID').toUpperCase().replace(/[^A-Z_]/g, '') || 'INVALID';
  const param = typeof data.param === 'string' ? data.param : '';
  const observation = typeof data.observation === 'string' ? data.observation : '';

  const meta = [];
  if (Number.isFinite(data.model_ms)) meta.push(`model ${formatMs(data.model_ms)}`);
  if (Number.isFinite(data.tokens_in) || Number.isFinite(data.tokens_out)) {
    meta.push(`${count(data.tokens_in)} tokens in, ${count(data.tokens_out)} out`);
  }

  const li = h('li', { className: `tick action-${action.toLowerCase()}`, testid: 'tick', data: { tick: n, action } },
    h('div', { className: 'tick-head' },
      h('span', { className: 'tick-no', text: `#${n}` }),
      h('span', { className: 'action-badge', text: action }),
      param ? paramNode(action, param) : null),
    observation ? h('p', { className: 'observation', text: observation }) : null,
    meta.length ? h('p', { className: 'tick-meta', text: meta.join(' · ') }) : null);

  const existing = view.ticks.get(n);
  if (existing) {
    // The same tick again (a replay): replace it, keeping its memory line.
    const memory = existing.querySelector('.memory');
    if (memory) li.append(memory);
    existing.replaceWith(li);
  } else {
    const later = [...view.ticks.entries()].filter(([m]) => m > n).sort(([a], [b]) => a - b)[0];
    els.ticks.insertBefore(li, later ? later[1] : null);
  }
  view.ticks.set(n, li);
  els.ticksEmpty.hidden = true;
}

function paramNode(action, param) {
  if (isWebUrl(param)) return linkOrText(param, { className: 'tick-param' });
  if (action === 'SEARCH') return h('q', { className: 'tick-param', text: param });
  return h('span', { className: 'tick-param', text: param });
}

function addMemory(data) {
  const n = Number(data.tick);
  const amount = (value) => (Array.isArray(value) ? value.length : Number(value) || 0);
  const writes = amount(data.writes);
  const queries = amount(data.queries);
  const text = `Memory: ${writes} ${writes === 1 ? 'write' : 'writes'}, ${queries} ${queries === 1 ? 'query' : 'queries'}`;
  const line = h('p', { className: 'memory', testid: 'memory', text });
  const tick = view.ticks.get(n);
  if (tick) {
    tick.querySelector('.memory')?.remove();
    tick.append(line);
  } else {
    els.ticks.append(h('li', { className: 'note' }, line));
    els.ticksEmpty.hidden = true;
  }
}

/**
 * The stream replays nothing from before its snapshot: say which ticks happened while this page was
 * not following (before it was opened, or during a long disconnection), so their absence is clear.
 */
function noteUnseenTicks(snapshotTick) {
  const upTo = Number(snapshotTick) || 0;
  const seen = Math.max(0, view.seenUpTo ?? 0, ...view.ticks.keys());
  if (upTo > seen) {
    const range = upTo === seen + 1 ? `Tick ${upTo}` : `Ticks ${seen + 1}–${upTo}`;
    const when = view.task ? 'while the connection was down' : 'before this page was opened';
    addNote(`${range} ran ${when}; they count in the totals above but are not listed here.`);
  }
  view.seenUpTo = Math.max(seen, upTo);
}

function addNote(text) {
  els.ticks.append(h('li', { className: 'note', text }));
  els.ticksEmpty.hidden = true;
}

/** `live`, `reconnecting` (with why and when) or `ended`: the text of `stream-state`. */
function setStream(state, { delayMs, signIn = false } = {}) {
  const previous = view.stream;
  view.stream = state;
  els.streamState.textContent = state;
  els.pill.dataset.state = state;
  els.section.classList.toggle('is-reconnecting', state === 'reconnecting');
  let note = '';
  if (state === 'reconnecting') {
    note = signIn
      ? 'Live updates are paused until you sign in again. Everything shown so far is kept.'
      : `The gateway does not answer. Reconnecting in ${Math.max(1, Math.round(delayMs / 1000))} s; everything shown so far is kept.`;
  }
  setMessage(els.streamNote, note);
  if (state === 'reconnecting' && previous !== 'reconnecting') announce('Lost the connection to the gateway; reconnecting.');
  if (state === 'live' && previous === 'reconnecting') announce('Live updates resumed.');
}

function showFailure({ status, body }) {
  setStream('ended');
  if (status === 404) {
    els.missing.hidden = false;
    els.body.hidden = true;
    els.ticksCard.hidden = true;
    els.result.hidden = true;
    els.status.textContent = 'not found';
    els.help.textContent = '';
    document.title = 'Task not found · Euglena';
    return;
  }
  const message = typeof body?.error?.message === 'string' ? body.error.message : `HTTP ${status}`;
  setMessage(els.message, `Cannot follow this task: ${message}`);
}

// --- Cancel -----------------------------------------------------------------------------------

async function cancel() {
  const current = view;
  if (!current?.task || isFinished(current.task.status) || current.cancelRequested) return;
  current.cancelRequested = true;
  setMessage(els.message, '');
  render();
  try {
    const { data } = await api.post(`/tasks/${encodeURIComponent(current.id)}/cancel`);
    if (view === current && isTask(data)) setTask(data, false);
  } catch (error) {
    if (view !== current || error?.name === 'SignedOutError') return;
    setMessage(els.message, `Could not cancel: ${api.describe(error)}`);
  } finally {
    if (view === current) {
      current.cancelRequested = false;
      if (current.task) render();
    }
  }
}

// --- Helpers ----------------------------------------------------------------------------------

function isTask(value) {
  return Boolean(value) && typeof value === 'object' && typeof value.status === 'string';
}

function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}
