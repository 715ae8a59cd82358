// "My tasks": a status filter, pages of tasks (newest first) with "Load more", refreshed every few
// seconds while any shown task is unfinished, and whenever the user comes back to the home page.
// Rows are updated in place so that keyboard focus on a row survives a refresh.

import * as api from '../api.js';
import { byTestId, h, setMessage } from '../dom.js';
import { count, formatTime, isFinished, statusClass, truncate } from '../format.js';

const PAGE = 20;
const MAX_PAGE = 100; // the gateway's largest page
const POLL_MS = 4000;

let els;
let rows = []; // TaskResponse objects as shown, newest first
let next = null;
let hasMore = false;
let loaded = false;
let visible = false;
let failure = '';
let generation = 0; // bumped when the filter changes: answers for an older list are dropped
let chain = Promise.resolve(); // list requests run one at a time
let pollTimer = 0;
const rowEls = new Map(); // task id → <li>

export function init() {
  els = {
    list: byTestId('task-list'),
    filter: byTestId('status-filter'),
    more: byTestId('more'),
    message: document.getElementById('list-message'),
  };
  els.filter.addEventListener('change', () => {
    generation += 1;
    rows = [];
    next = null;
    hasMore = false;
    loaded = false;
    render();
    reload();
  });
  els.more.addEventListener('click', loadMore);
}

/** The home page is shown: load the list, or refresh what is loaded, and keep it fresh. */
export function show() {
  visible = true;
  if (loaded) refresh();
  else reload();
  schedulePoll();
}

export function hide() {
  visible = false;
  clearTimeout(pollTimer);
}

/** Forgets everything (signed out). */
export function reset() {
  hide();
  generation += 1;
  rows = [];
  next = null;
  hasMore = false;
  loaded = false;
  failure = '';
  els.filter.value = '';
  render();
}

function reload() {
  return serial(async (gen) => {
    const page = await fetchPage({ limit: PAGE });
    if (gen !== generation) return;
    rows = page.data;
    next = page.next;
    hasMore = page.hasMore;
    loaded = true;
  });
}

function loadMore() {
  if (!next) return;
  els.more.disabled = true;
  els.more.textContent = 'Loading…';
  return serial(async (gen) => {
    const page = await fetchPage({ limit: PAGE, after: next });
    if (gen !== generation) return;
    const known = new Set(rows.map((task) => task.correlation_id));
    rows = rows.concat(page.data.filter((task) => !known.has(task.correlation_id)));
    next = page.next;
    hasMore = page.hasMore;
  }).finally(() => {
    els.more.disabled = false;
    els.more.textContent = 'Load more';
  });
}

/** Fetches again as many of the newest tasks as are shown, keeping older loaded pages if more than fit. */
function refresh() {
  return serial(async (gen) => {
    const limit = Math.min(MAX_PAGE, Math.max(PAGE, rows.length));
    const page = await fetchPage({ limit });
    if (gen !== generation) return;
    const oldest = page.data.at(-1);
    const fresh = new Set(page.data.map((task) => task.correlation_id));
    const tail = page.hasMore && oldest
      ? rows.filter((task) => !fresh.has(task.correlation_id) && time(task) < time(oldest))
      : [];
    rows = page.data.concat(tail);
    if (tail.length === 0) {
      next = page.next;
      hasMore = page.hasMore;
    }
    loaded = true;
  });
}

/** Runs list requests one after another; errors end up in the list's message line. */
function serial(operation) {
  const gen = generation;
  chain = chain
    .then(async () => {
      if (gen !== generation) return;
      try {
        await operation(gen);
        if (gen === generation) failure = '';
      } catch (error) {
        if (error?.name === 'SignedOutError' || gen !== generation) return;
        failure = error instanceof api.NetworkError
          ? 'Could not load your tasks: the gateway does not answer. The list retries by itself.'
          : `Could not load your tasks: ${api.describe(error)}`;
      }
      if (gen === generation) render();
    });
  return chain;
}

async function fetchPage({ limit, after }) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (after) query.set('after', after);
  if (els.filter.value) query.set('status', els.filter.value);
  const { data } = await api.get(`/tasks?${query}`);
  const tasks = Array.isArray(data?.data) ? data.data.filter(isTask) : [];
  return { data: tasks, next: typeof data?.next === 'string' ? data.next : null, hasMore: data?.has_more === true };
}

function schedulePoll() {
  clearTimeout(pollTimer);
  if (!visible) return;
  pollTimer = setTimeout(async () => {
    const stale = !loaded || failure || rows.some((task) => !isFinished(task.status));
    if (visible && !document.hidden && stale) await (loaded ? refresh() : reload());
    schedulePoll();
  }, POLL_MS);
}

// --- Rendering --------------------------------------------------------------------------------

function render() {
  let message = failure;
  if (!message && !loaded) message = 'Loading your tasks…';
  if (!message && rows.length === 0) {
    message = els.filter.value ? 'No tasks with this status.' : 'No tasks yet. Submit one above.';
  }
  setMessage(els.message, message);
  els.message.classList.toggle('is-error', Boolean(failure));

  let cursor = els.list.firstChild;
  for (const task of rows) {
    const li = rowFor(task);
    if (li === cursor) cursor = cursor.nextSibling;
    else els.list.insertBefore(li, cursor);
  }
  while (cursor) {
    const after = cursor.nextSibling;
    cursor.remove();
    cursor = after;
  }
  const shown = new Set(rows.map((task) => task.correlation_id));
  for (const id of rowEls.keys()) if (!shown.has(id)) rowEls.delete(id);

  els.more.hidden = !hasMore;
}

/** The row of a task, created once and then updated in place. */
function rowFor(task) {
  const id = task.correlation_id;
  let li = rowEls.get(id);
  if (!li) {
    li = h('li', { className: 'task-row', testid: 'task-row', data: { taskId: id } },
      h('a', { className: 'row-link', attrs: { href: `#/tasks/${encodeURIComponent(id)}` } },
        h('span', { className: 'row-top' },
          h('span', { className: 'badge' }),
          h('span', { className: 'row-ticks' })),
        h('span', { className: 'row-mandate' }),
        h('time', { className: 'row-time' })));
    rowEls.set(id, li);
  }
  li.dataset.status = String(task.status);
  const badge = li.querySelector('.badge');
  badge.className = `badge ${statusClass(task.status)}`;
  badge.textContent = String(task.status);
  li.querySelector('.row-ticks').textContent = `tick ${count(task.tick)} / ${count(task.max_ticks)}`;
  li.querySelector('.row-mandate').textContent = truncate(task.mandate, 200);
  const when = li.querySelector('.row-time');
  when.dateTime = String(task.created_at ?? '');
  when.textContent = formatTime(task.created_at);
  return li;
}

function isTask(value) {
  return typeof value?.correlation_id === 'string' && value.correlation_id !== '';
}

function time(task) {
  const ms = Date.parse(task.created_at);
  return Number.isNaN(ms) ? 0 : ms;
}
