// What task fields mean to a person: status words, times, truncation.

export const STATUSES = ['in_queue', 'in_progress', 'cancelling', 'completed', 'failed', 'cancelled'];
const FINISHED = new Set(['completed', 'failed', 'cancelled']);

/** A task in one of these states will not change any more. */
export function isFinished(status) {
  return FINISHED.has(status);
}

const HELP = {
  in_queue: 'Queued: waiting for a free agent.',
  in_progress: 'Running: an agent is working on it.',
  cancelling: 'Cancelling: the agent stops within a second.',
  completed: 'Completed: the result is below.',
  failed: 'Failed: the error is below.',
  cancelled: 'Cancelled: what was gathered before the cancel is below.',
};

/** One sentence saying what a status means. */
export function statusHelp(status) {
  return HELP[status] ?? `Status: ${status}`;
}

/** The CSS class for a status badge; unknown values (they come from the server) get a neutral one. */
export function statusClass(status) {
  return STATUSES.includes(status) ? `status-${status}` : 'status-unknown';
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

/** A local date and time for an RFC 3339 string, or the string itself if it does not parse. */
export function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso ?? '') : dateTime.format(date);
}

/** At most `max` characters (counting code points), with an ellipsis when cut. */
export function truncate(text, max) {
  const chars = [...String(text ?? '')];
  return chars.length <= max ? chars.join('') : `${chars.slice(0, max - 1).join('').trimEnd()}…`;
}

/** A count as plain digits (the tests read these), or a dash when unknown. */
export function count(value) {
  return Number.isFinite(value) ? String(value) : '–';
}
