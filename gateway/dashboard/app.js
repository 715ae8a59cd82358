// Boot and routing. `#/` is home (new task + my tasks), `#/tasks/<id>` a task page.
// Views keep their contents while the session is renewed: a 401 only brings up the sign-in panel,
// and the requests that met it carry on once the user has signed in again (see api.js).

import * as api from './api.js';
import * as auth from './auth.js';
import * as banner from './banner.js';
import { sleep } from './dom.js';
import * as header from './views/header.js';
import * as signin from './views/signin.js';
import * as submit from './views/submit.js';
import * as taskView from './views/task.js';
import * as tasklist from './views/tasklist.js';

// A `#token=` sign-in link leaves the address bar before anything else happens.
const linkToken = auth.takeTokenFromUrl();

const els = {
  boot: document.getElementById('boot'),
  home: document.getElementById('home-view'),
  homeHeading: document.getElementById('home-heading'),
  signin: document.querySelector('[data-testid="signin"]'),
};
let shown = null; // 'home', or the id of the task shown

boot();

async function boot() {
  auth.configure(await loadConfig());
  header.init({ onSignOut: () => auth.signOut() });
  signin.init();
  submit.init({ onCreated: (task) => navigateTo(`#/tasks/${encodeURIComponent(task.correlation_id)}`) });
  tasklist.init();
  taskView.init();
  auth.onAuthChange(onAuthChange);
  window.addEventListener('hashchange', () => route(false));
  els.boot.hidden = true;

  if (linkToken) {
    await signin.signInWithToken(linkToken);
    if (auth.authState() !== 'signed-in') signin.show();
  } else if (!auth.restore()) {
    signin.show();
  }
}

/** The sign-in settings; without them only token sign-in is offered. */
async function loadConfig() {
  for (let attempt = 1; ; attempt += 1) {
    try {
      const { data } = await api.get('/dashboard/config.json', { auth: false });
      banner.clear('config');
      return data ?? {};
    } catch {
      if (attempt >= 2) {
        banner.set('config', 'Could not load the sign-in settings, so only token sign-in is offered. Reload the page to try again.');
        return {};
      }
      await sleep(700);
    }
  }
}

function onAuthChange(state) {
  if (state === 'signed-in') {
    const focusWasInSignin = els.signin.contains(document.activeElement);
    banner.clear('session');
    signin.hide();
    header.start();
    route(focusWasInSignin);
  } else if (state === 'expired') {
    // Keep everything on screen; the sign-in panel appears above it.
    banner.set('session', 'Your session has expired. Sign in again.');
    signin.show({ expired: true });
  } else {
    header.stop();
    taskView.close();
    tasklist.reset();
    submit.reset();
    els.home.hidden = true;
    shown = null;
    banner.clearAll();
    signin.show();
    document.title = 'Euglena dashboard';
  }
}

/** Shows the view for the current address. `forceFocus`: move the focus to it even if unchanged. */
function route(forceFocus) {
  if (auth.authState() === 'signed-out') return;
  const match = /^#\/tasks\/([^/?#]+)\/?$/.exec(location.hash);
  const target = match ? decode(match[1]) : 'home';
  const changed = target !== shown;
  shown = target;
  if (match) {
    tasklist.hide();
    els.home.hidden = true;
    taskView.open(target);
    if (changed || forceFocus) taskView.focus();
  } else {
    taskView.close();
    els.home.hidden = false;
    tasklist.show();
    document.title = 'Euglena dashboard';
    if (changed || forceFocus) els.homeHeading.focus();
  }
}

function navigateTo(hash) {
  if (location.hash === hash) route(false);
  else location.hash = hash;
}

function decode(part) {
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}
