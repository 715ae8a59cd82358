// The banner under the header: what is wrong with the connection or the session, and what to do.
// Several parts of the app report through it; each owns one key and clears it when things recover.

import { byTestId, h } from './dom.js';

// Most important first: the order the messages are shown in.
const ORDER = ['session', 'network', 'unavailable', 'config'];
const messages = new Map();

/** Shows `text` under `key`, replacing that key's previous message. */
export function set(key, text) {
  if (messages.get(key) === text) return;
  messages.set(key, text);
  render();
}

/** Removes the message under `key`, if any. */
export function clear(key) {
  if (messages.delete(key)) render();
}

/** Removes every message (on sign-out). */
export function clearAll() {
  messages.clear();
  render();
}

function render() {
  const banner = byTestId('banner');
  const keys = [...messages.keys()].sort((a, b) => rank(a) - rank(b));
  banner.replaceChildren(...keys.map((key) => h('p', { text: messages.get(key) })));
  banner.hidden = keys.length === 0;
}

function rank(key) {
  const index = ORDER.indexOf(key);
  return index < 0 ? ORDER.length : index;
}
