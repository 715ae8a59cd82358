// Small DOM helpers. Everything the user, a model or a web page wrote goes in as text, never as HTML.

/** The element with this `data-testid` (the hooks double as our selectors). */
export function byTestId(id, root = document) {
  return root.querySelector(`[data-testid="${id}"]`);
}

/**
 * Creates an element. `props`: `className`, `text`, `testid`, `attrs` (set with setAttribute),
 * `data` (dataset entries). Children are nodes or strings (strings become text nodes).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  if (props.className) el.className = props.className;
  if (props.text !== undefined && props.text !== null) el.textContent = String(props.text);
  if (props.testid) el.dataset.testid = props.testid;
  for (const [name, value] of Object.entries(props.attrs ?? {})) {
    if (value !== undefined && value !== null) el.setAttribute(name, String(value));
  }
  for (const [name, value] of Object.entries(props.data ?? {})) el.dataset[name] = String(value);
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return el;
}

/** True for absolute `http:` and `https:` URLs only: nothing else may become a link. */
export function isWebUrl(value) {
  if (typeof value !== 'string') return false;
  try {
    const url = new URL(value);
    return url.protocol === 'http:' || url.protocol === 'https:';
  } catch {
    return false;
  }
}

/** A link opening in a new tab for a web URL; plain text for anything else. */
export function linkOrText(value, props = {}) {
  const text = String(value ?? '');
  if (isWebUrl(text)) {
    return h('a', {
      ...props,
      text,
      attrs: { ...props.attrs, href: text, rel: 'noopener noreferrer', target: '_blank' },
    });
  }
  return h('span', { ...props, text });
}

let announceTimer = 0;

/** Says something to screen-reader users through the page's polite live region. */
export function announce(message) {
  const region = document.getElementById('announcer');
  if (!region) return;
  // Clearing first makes a repeated message be read again.
  region.textContent = '';
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => { region.textContent = message; }, 50);
}

/** Shows or hides an error/status paragraph, with its text. */
export function setMessage(el, text) {
  el.textContent = text ?? '';
  el.hidden = !text;
}

/** Resolves after `ms`, or at once (rejecting) when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) { reject(signal.reason); return; }
    const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
    function onAbort() { clearTimeout(timer); reject(signal.reason); }
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
