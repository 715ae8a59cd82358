// Follows a task's event stream (`text/event-stream`) over fetch(), because EventSource cannot
// send an Authorization header. Reconnects after a drop with `Last-Event-ID` and a backoff of
// 1 s doubling to 15 s (with jitter) until a terminal frame arrives or `stop()` is called.

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const FIRST_DELAY_MS = 1000;
const MAX_DELAY_MS = 15_000;
// The server sends a keep-alive comment every 15 s; this much silence means a dead connection.
const IDLE_MS = 45_000;

/**
 * Parses server-sent events incrementally. `push(text)` takes decoded text in any chunking;
 * `onFrame({ id, type, data })` is called per frame, `id` null when the frame had none and `data`
 * null when it had no data lines (such a frame only moves the last event id).
 */
export function createSseParser(onFrame) {
  let buffer = '';
  let id = null;
  let type = '';
  let data = [];

  function line(text) {
    if (text === '') {
      if (id !== null || data.length > 0) {
        onFrame({ id, type: type || 'message', data: data.length > 0 ? data.join('\n') : null });
      }
      id = null;
      type = '';
      data = [];
      return;
    }
    if (text.startsWith(':')) return; // keep-alive comment
    const colon = text.indexOf(':');
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') type = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id' && !value.includes('\0')) id = value;
  }

  return {
    push(text) {
      buffer += text;
      let end;
      while ((end = buffer.indexOf('\n')) >= 0) {
        const text = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        line(text.endsWith('\r') ? text.slice(0, -1) : text);
      }
    },
  };
}

/** The wait before reconnect attempt number `attempt` (0-based): 1, 2, 4, 8, 15, 15… s, ±20 %. */
export function backoffMs(attempt) {
  const base = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** Math.min(attempt, 10));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

/**
 * Follows the stream at `url`. Handlers:
 * - `getToken()` → the bearer token for the next connection (may be async);
 * - `onUnauthorized(token)` → resolves when a new token is worth trying, rejects to give up;
 * - `onOpen()` when a connection is established;
 * - `onEvent({ type, data })` per frame with parsed JSON data (frames whose data is not JSON are skipped);
 * - `onRetry({ delayMs, attempt })` before waiting to reconnect;
 * - `onEnd()` after the terminal frame (or when `isDone()` says nothing more will come);
 * - `onFail({ status, body })` for an answer that retrying will not fix (e.g. 404);
 * - `isDone()` → true when the task shown is already finished (checked after a drop).
 * `options.lastEventId` starts the stream after that event: `'0-0'` asks for the task's whole log
 * (the server answers with a snapshot instead when the log no longer holds its start).
 * Returns `{ stop }`.
 */
export function followEvents(url, handlers, options = {}) {
  const stopper = new AbortController();
  let lastId = options.lastEventId ?? null;

  run();
  return { stop: () => stopper.abort() };

  async function run() {
    let attempt = 0;
    while (!stopper.signal.aborted) {
      const outcome = await connect();
      if (stopper.signal.aborted || outcome.kind === 'fatal') return;
      if (outcome.kind === 'ended' || handlers.isDone?.()) {
        handlers.onEnd?.();
        return;
      }
      if (outcome.kind === 'renewed') continue; // signed in again: reconnect at once
      if (outcome.gotFrames) attempt = 0;
      const delayMs = backoffMs(attempt);
      handlers.onRetry?.({ delayMs, attempt });
      attempt += 1;
      try {
        await sleepUnlessStopped(delayMs);
      } catch {
        return;
      }
    }
  }

  /** One connection, read until it ends. Resolves to `{ kind, gotFrames }`. */
  async function connect() {
    const connection = new AbortController();
    const abortConnection = () => connection.abort();
    stopper.signal.addEventListener('abort', abortConnection, { once: true });
    let idleTimer = 0;
    const stillAlive = () => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(abortConnection, IDLE_MS);
    };
    let gotFrames = false;
    let ended = false;
    let token = null;

    try {
      token = await handlers.getToken();
      const headers = { Accept: 'text/event-stream' };
      if (token) headers.Authorization = `Bearer ${token}`;
      if (lastId !== null) headers['Last-Event-ID'] = lastId;
      stillAlive();
      const response = await fetch(url, { headers, signal: connection.signal, cache: 'no-store' });

      if (response.status === 401) {
        await handlers.onUnauthorized(token);
        return { kind: 'renewed' };
      }
      if (!response.ok || !response.body) {
        if (response.status >= 500 || response.status === 429 || response.status === 408) {
          return { kind: 'failed', gotFrames };
        }
        handlers.onFail?.({ status: response.status, body: await readJson(response) });
        return { kind: 'fatal' };
      }
      handlers.onOpen?.();

      const parser = createSseParser((frame) => {
        if (frame.id !== null) lastId = frame.id;
        if (frame.data === null || ended) return;
        let data;
        try {
          data = JSON.parse(frame.data);
        } catch {
          return;
        }
        gotFrames = true;
        if (TERMINAL.has(frame.type)) ended = true;
        try {
          handlers.onEvent({ type: frame.type, data });
        } catch (error) {
          // A bug in a view must not look like a dropped connection: report it and read on.
          globalThis.reportError?.(error);
        }
      });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      while (!ended) {
        const { value, done } = await reader.read();
        if (done) {
          // Whatever follows the last blank line is an incomplete frame: it is dropped.
          parser.push(decoder.decode());
          break;
        }
        stillAlive();
        parser.push(decoder.decode(value, { stream: true }));
      }
      if (ended) reader.cancel().catch(() => {});
      return { kind: ended ? 'ended' : 'dropped', gotFrames };
    } catch (error) {
      if (stopper.signal.aborted) return { kind: 'fatal' };
      if (error?.name === 'SignedOutError') return { kind: 'fatal' };
      return { kind: 'failed', gotFrames };
    } finally {
      clearTimeout(idleTimer);
      stopper.signal.removeEventListener('abort', abortConnection);
    }
  }

  function sleepUnlessStopped(ms) {
    return new Promise((resolve, reject) => {
      const onStop = () => { clearTimeout(timer); reject(new Error('stopped')); };
      const timer = setTimeout(() => { stopper.signal.removeEventListener('abort', onStop); resolve(); }, ms);
      stopper.signal.addEventListener('abort', onStop, { once: true });
    });
  }
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}
