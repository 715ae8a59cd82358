// The sign-in panel: Supabase email + password when configured, and always "paste a token".
// Shown alone when signed out, and above the page (which stays as it was) when the session expired.

import * as api from '../api.js';
import * as auth from '../auth.js';
import { byTestId, setMessage } from '../dom.js';

let els;

export function init() {
  els = {
    section: byTestId('signin'),
    heading: document.getElementById('signin-heading'),
    intro: document.getElementById('signin-intro'),
    error: byTestId('signin-error'),
    passwordForm: document.getElementById('password-form'),
    divider: document.getElementById('signin-divider'),
    email: byTestId('email'),
    password: byTestId('password'),
    passwordSubmit: byTestId('signin-submit'),
    tokenForm: document.getElementById('token-form'),
    token: byTestId('token-input'),
    tokenSubmit: byTestId('token-submit'),
  };
  const withPassword = auth.hasPasswordSignIn();
  els.passwordForm.hidden = !withPassword;
  els.divider.hidden = !withPassword;

  els.passwordForm.addEventListener('submit', (event) => {
    event.preventDefault();
    signInWithPassword();
  });
  els.tokenForm.addEventListener('submit', (event) => {
    event.preventDefault();
    signInWithToken(els.token.value);
  });
  // A token is one line: Enter signs in rather than adding a newline.
  els.token.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.tokenForm.requestSubmit();
    }
  });
}

/** Shows the panel. `expired`: the session ran out while the user was doing something. */
export function show({ expired = false } = {}) {
  els.intro.textContent = expired
    ? 'Your session has expired. Sign in again to carry on where you were; nothing on the page is lost.'
    : 'Sign in to submit tasks and follow them.';
  els.section.classList.toggle('is-expired', expired);
  const wasHidden = els.section.hidden;
  els.section.hidden = false;
  // Only take the focus when nothing else has it, so an expiry never interrupts typing.
  if (wasHidden && (!document.activeElement || document.activeElement === document.body || !expired)) {
    (auth.hasPasswordSignIn() ? els.email : els.token).focus();
  }
}

export function hide() {
  els.section.hidden = true;
  setMessage(els.error, '');
  els.password.value = '';
  els.token.value = '';
}

/** Signs in with a token from a `#token=` link or the form; shows why when the gateway refuses it. */
export async function signInWithToken(raw) {
  const session = auth.sessionFromToken(raw ?? '');
  if (!session.token) {
    fail('Paste a token first.', els.token);
    return;
  }
  await busy(els.tokenSubmit, 'Checking…', async () => {
    await useSession(session, els.token, 'The gateway did not accept this token');
  });
}

async function signInWithPassword() {
  const email = els.email.value.trim();
  const password = els.password.value;
  if (!email) return fail('Enter your email address.', els.email);
  if (!password) return fail('Enter your password.', els.password);
  await busy(els.passwordSubmit, 'Signing in…', async () => {
    let session;
    try {
      session = await auth.passwordSignIn(email, password);
    } catch (error) {
      fail(error.message, els.password);
      return;
    }
    await useSession(session, els.password, 'The gateway did not accept this sign-in');
  });
}

async function useSession(session, field, refusal) {
  setMessage(els.error, '');
  const check = await api.checkToken(session.token);
  if (check.verdict === 'rejected') {
    fail(`${refusal} (${check.reason.replace(/\.$/, '')}). Check that it is complete and still valid.`, field);
    return;
  }
  auth.adopt(session);
}

function fail(message, field) {
  setMessage(els.error, message);
  if (field && !els.section.hidden) field.focus();
}

async function busy(button, label, work) {
  const text = button.textContent;
  button.disabled = true;
  button.textContent = label;
  try {
    await work();
  } finally {
    button.disabled = false;
    button.textContent = text;
  }
}
