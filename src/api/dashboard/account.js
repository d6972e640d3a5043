// Signing in: the dashboard reads as a user once given a bearer token (a
// JWT from the deployment's identity provider, an API key, or on the
// embedded default `atelier token --as NAME`). The token stays in this
// tab's sessionStorage: a reload keeps it, closing the tab forgets it. It
// goes only to this origin's API, as an `Authorization` header.

import { getJson, describe } from './api.js';
import { setText } from './dom.js';

const STORED = 'atelier.token';

export class Account {
  constructor(root) {
    this.form = root.querySelector('#signin');
    this.input = root.querySelector('#signin-token');
    this.box = root.querySelector('#signed-in');
    this.who = root.querySelector('#me');
    this.out = root.querySelector('#signout');
    this.status = root.querySelector('#signin-status');
    this.token = null;
    this.me = null;
    this.watchers = new Set();
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      const t = this.input.value.trim();
      if (t) this.signIn(t);
    });
    this.out.addEventListener('click', () => this.signOut());
  }

  /** Calls `fn(account)` on every sign-in and sign-out. */
  onChange(fn) {
    this.watchers.add(fn);
  }

  /** Signs in again with the token this tab kept, if any. */
  start() {
    let kept = null;
    try {
      kept = sessionStorage.getItem(STORED);
    } catch {
      // Storage refused (a privacy mode): signing in still works per page.
    }
    if (kept) this.signIn(kept);
  }

  /** Checks the token with `GET /v1/me`; a refused one signs nobody in. */
  async signIn(token) {
    setText(this.status, 'signing in…');
    try {
      const me = await getJson('/v1/me', { token });
      this.token = token;
      this.me = me;
      try {
        sessionStorage.setItem(STORED, token);
      } catch {
        // Not kept across reloads; still signed in on this page.
      }
      setText(this.status, '');
    } catch (err) {
      this.forget();
      setText(this.status, err.status === 401 ? `not signed in: ${err.message}` : `not signed in (${describe(err)})`);
    }
    this.render();
  }

  signOut() {
    this.forget();
    setText(this.status, '');
    this.render();
  }

  forget() {
    this.token = null;
    this.me = null;
    try {
      sessionStorage.removeItem(STORED);
    } catch {
      // Nothing was kept.
    }
  }

  render() {
    const me = this.me;
    this.form.hidden = Boolean(me);
    this.box.hidden = !me;
    this.input.value = '';
    setText(this.who, me ? `${me.name} (${me.id})${me.admin ? ' · admin' : ''}` : '');
    this.box.dataset.user = me?.id ?? '';
    for (const fn of this.watchers) fn(this);
  }
}
