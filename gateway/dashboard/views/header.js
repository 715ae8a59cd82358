// The header's fleet figures (live agents, queue depth) from GET /queue, every 5 s while signed in.

import * as api from '../api.js';
import { byTestId, sleep } from '../dom.js';
import { count } from '../format.js';

const PERIOD_MS = 5000;

let els;
let loop = null; // AbortController of the running poll loop

export function init({ onSignOut }) {
  els = {
    fleet: document.getElementById('fleet'),
    agents: byTestId('agent-count'),
    ready: byTestId('queue-ready'),
    inFlight: byTestId('queue-in-flight'),
    signout: byTestId('signout'),
  };
  els.signout.addEventListener('click', onSignOut);
  // Coming back to the tab: show fresh figures without waiting for the next tick.
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && loop) start();
  });
}

/** Shows the figures and keeps them fresh. */
export function start() {
  loop?.abort();
  loop = new AbortController();
  els.fleet.hidden = false;
  poll(loop.signal);
}

/** Hides the figures and stops polling (signed out). */
export function stop() {
  loop?.abort();
  loop = null;
  els.fleet.hidden = true;
  render({});
  els.fleet.classList.remove('is-stale');
}

async function poll(signal) {
  while (!signal.aborted) {
    if (!document.hidden) {
      try {
        const { data } = await api.get('/queue', { signal });
        if (signal.aborted) return;
        render(data ?? {});
        els.fleet.classList.remove('is-stale');
      } catch (error) {
        if (signal.aborted || error?.name === 'SignedOutError') return;
        // Keep the last figures, marked as old; the banner says what is wrong.
        els.fleet.classList.add('is-stale');
      }
    }
    try {
      await sleep(PERIOD_MS, signal);
    } catch {
      return;
    }
  }
}

function render(queue) {
  els.agents.textContent = count(queue.agents);
  els.ready.textContent = count(queue.ready);
  els.inFlight.textContent = count(queue.in_flight);
}
