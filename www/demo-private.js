// The demo's token-protected channel: the page signs in as a user by minting an HS256
// token with the demo secret (WebCrypto), keeps it in the cookie channels_jwt (what
// EventSource sends), and subscribes to private.<user>.inbox. The token lives 30 s: the
// stream then ends with `token-expired` and channels.js asks for a new one (`token`).
// Demo only: a real site signs tokens on its server and never hands out the secret.
import { subscribe } from './channels.js';

const TOKEN_SECONDS = 30;
const $ = (id) => document.getElementById(id);

const state = { user: null, sub: null, key: null, refreshes: 0 };

function b64url(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function fromB64url(text) {
  const s = atob(text.replace(/-/g, '+').replace(/_/g, '/'));
  return Uint8Array.from(s, (c) => c.charCodeAt(0));
}

// The demo's signing key, from the JWKS nginx verifies with.
async function signingKey() {
  if (state.key) return state.key;
  const jwks = await (await fetch('/demo-jwks.json', { cache: 'no-store' })).json();
  const jwk = jwks.keys[0];
  state.key = { kid: jwk.kid, key: await crypto.subtle.importKey('raw', fromB64url(jwk.k),
    { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']) };
  return state.key;
}

async function mintToken(user) {
  const { kid, key } = await signingKey();
  const exp = Math.floor(Date.now() / 1000) + TOKEN_SECONDS;
  const enc = new TextEncoder();
  const header = b64url(enc.encode(JSON.stringify({ alg: 'HS256', typ: 'JWT', kid })));
  const claims = b64url(enc.encode(JSON.stringify({
    sub: user, exp, channels: { subscribe: [`private.${user}.*`], publish: [`private.${user}.*`] },
  })));
  const input = `${header}.${claims}`;
  const sig = new Uint8Array(await crypto.subtle.sign('HMAC', key, enc.encode(input)));
  return { token: `${input}.${b64url(sig)}`, exp };
}

function setBadge(text, kind) {
  const el = $('private-state');
  el.textContent = text;
  el.className = `badge ${kind ?? ''}`.trim();
}

function note(text, cls = 'note') {
  const li = document.createElement('li');
  li.className = cls;
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  $('private-feed').prepend(li);
}

// channels.js calls this before connecting and after token-expired or a refusal: a new
// cookie, and null (the cookie carries the token).
async function renewCookie({ reason }) {
  const { token, exp } = await mintToken(state.user);
  document.cookie = `channels_jwt=${token}; path=/; SameSite=Strict`;
  if (reason !== 'start') state.refreshes += 1;
  $('private-token').textContent = `token for ${state.user}, expires ${new Date(exp * 1000).toLocaleTimeString()}` +
    ` (renewed ${state.refreshes} times)`;
  if (reason !== 'start') note(`new token (${reason})`);
  return null;
}

function signIn(event) {
  event.preventDefault();
  const user = $('private-user').value.trim();
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(user)) return;
  state.sub?.close();
  state.user = user;
  state.refreshes = 0;
  const channel = `private.${user}.inbox`;
  $('private-url').textContent = `/private/events/${channel}`;
  $('private-feed').replaceChildren();
  state.sub = subscribe({
    url: '/private/events/{channels}',
    pollUrl: '/private/poll/{channels}',
    channels: [channel],
    token: renewCookie,
    onMessage: (m) => note(m.data, 'message'),
    onOpen: () => setBadge(`open as ${user}`, 'open'),
    onError: (err, { delay, fatal }) => setBadge(fatal ? 'refused' : `retry in ${(delay / 1000).toFixed(1)}s`,
      fatal ? 'closed' : 'retrying'),
  });
  $('private-send').disabled = false;
  $('private-peek').disabled = false;
}

async function send() {
  const channel = `private.${state.user}.inbox`;
  const res = await fetch(`/publish/${channel}`, { method: 'POST', body: `hello ${state.user}` });
  if (!res.ok) note(`publish: HTTP ${res.status}`);
}

// Someone else's channel with this user's token: refused with 403.
async function peek() {
  const res = await fetch('/private/poll/private.bob.inbox', { cache: 'no-store' });
  note(`GET /private/poll/private.bob.inbox: ${res.status} ${(await res.text()).trim()}`);
}

export function startPrivatePanel() {
  $('private-form').addEventListener('submit', signIn);
  $('private-send').addEventListener('click', send);
  $('private-peek').addEventListener('click', peek);
}
