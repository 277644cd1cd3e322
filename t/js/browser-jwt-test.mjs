// Token-protected channels in headless Chromium against conf-examples/demo.conf:
//   node t/js/browser-jwt-test.mjs PUBLIC_BASE INTERNAL_BASE
// Tokens are minted here with the npm jose package, with the demo's key (www/demo-jwks.json).
// Chromium's own EventSource with the cookie channels_jwt; channels.js's `token` option
// (access_token and Bearer, and cookie renewal) across token-expired and a 401; the demo
// page's private panel.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SignJWT, base64url } from 'jose';
import { test, run, assert, equal, waitFor } from './runner.mjs';
import { launchChromium, routedPage } from './chromium.mjs';

const [base, internal] = process.argv.slice(2);
if (!base || !internal) {
  console.error('usage: node browser-jwt-test.mjs PUBLIC_BASE INTERNAL_BASE');
  process.exit(2);
}

const jwks = JSON.parse(readFileSync(fileURLToPath(new URL('../../www/demo-jwks.json', import.meta.url)), 'utf8'));
const demoKey = jwks.keys[0];
const unique = () => Math.random().toString(36).slice(2, 10);

// A token for user: private.<user>.* for `seconds` (exp in whole seconds).
async function mint(user, seconds) {
  const exp = Math.floor(Date.now() / 1000) + seconds;
  return new SignJWT({ sub: user, exp, channels: { subscribe: [`private.${user}.*`] } })
    .setProtectedHeader({ alg: 'HS256', kid: demoKey.kid })
    .sign(base64url.decode(demoKey.k));
}

async function publish(channel, data) {
  const res = await fetch(`${internal}/pub/${encodeURIComponent(channel)}`, { method: 'POST', body: data });
  assert(res.status === 201, `publish to ${channel}: HTTP ${res.status}`);
  return (await res.json()).id;
}

async function subscribers(channel) {
  const res = await fetch(`${internal}/pub/${encodeURIComponent(channel)}`);
  return res.status === 200 ? (await res.json()).subscribers : 0;
}

const PAGE = `<!doctype html><meta charset="utf-8"><title>jwt test</title>
<script type="module">
import { subscribe } from '/channels.js';
window.subs = {};
window.start = (name, options) => {
  const log = { messages: [], opens: 0, errors: [], tokens: [] };
  const mode = options.mode;
  const sub = subscribe({
    ...options,
    token: async ({ reason }) => {
      log.tokens.push(reason);
      const t = await window.mintToken(options.user, options.seconds);
      if (mode === 'cookie') {
        document.cookie = 'channels_jwt=' + t + '; path=/';
        return null;
      }
      return t;
    },
    onMessage: (m) => log.messages.push({ id: m.id, data: m.data }),
    onOpen: () => { log.opens += 1; },
    onError: (e, info) => log.errors.push({ message: e.message, fatal: info.fatal }),
  });
  window.subs[name] = { sub, log };
};
window.state = (name) => ({ ...window.subs[name].log, transport: window.subs[name].sub.transport });
window.stop = (name) => window.subs[name].sub.close();
window.ready = true;
</script>`;

const newPage = (browser) => routedPage(browser, `${base}/__jwt-test.html`, PAGE,
  { expose: { mintToken: (user, seconds) => mint(user, seconds) } });

const state = (page, name) => page.evaluate((n) => window.state(n), name);

async function waitMessages(page, name, count, what) {
  return waitFor(async () => {
    const s = await state(page, name);
    return s.messages.length >= count ? s : null;
  }, { what: `${count} messages (${what})`, timeout: 20000 });
}

test('EventSource sends the cookie: a granted channel streams, without it the stream is refused', async ({ page }) => {
  const user = `u${unique()}`;
  const ch = `private.${user}.inbox`;
  const token = await mint(user, 600);
  const opened = await page.evaluate(async ([url, tok]) => {
    document.cookie = `channels_jwt=${tok}; path=/`;
    window.got = [];
    const es = new EventSource(url);
    window.es = es;
    es.onmessage = (e) => window.got.push(e.data);
    return new Promise((resolve) => {
      es.onopen = () => resolve('open');
      es.onerror = () => resolve(`error (readyState ${es.readyState})`);
    });
  }, [`/private/events/${ch}`, token]);
  equal(opened, 'open', 'EventSource with the cookie');
  await waitFor(async () => (await subscribers(ch)) === 1, { what: 'subscribed' });
  await publish(ch, 'for your eyes');
  await waitFor(() => page.evaluate(() => window.got.length === 1), { what: 'the message' });
  equal(await page.evaluate(() => window.got), ['for your eyes'], 'message received');
  const refused = await page.evaluate(async (url) => {
    window.es.close();
    document.cookie = 'channels_jwt=; path=/; max-age=0';
    const es = new EventSource(url);
    return new Promise((resolve) => {
      es.onopen = () => resolve('open');
      es.onerror = () => { resolve(`closed ${es.readyState === EventSource.CLOSED}`); es.close(); };
    });
  }, `/private/events/${ch}`);
  equal(refused, 'closed true', 'EventSource without a token gets 401 and gives up');
  const other = await page.evaluate(async ([url, tok]) => {
    document.cookie = `channels_jwt=${tok}; path=/`;
    const res = await fetch(url);
    document.cookie = 'channels_jwt=; path=/; max-age=0';
    return `${res.status} ${res.headers.get('WWW-Authenticate')}`;
  }, [`/private/poll/private.someone-else.inbox`, token]);
  equal(other, '403 Bearer realm="channels", error="insufficient_scope"', "another user's channel: 403");
});

for (const [transport, mode] of [['sse', 'access_token'], ['sse', 'cookie'], ['longpoll', 'bearer']]) {
  test(`channels.js ${transport} (${mode}): a new token after expiry, nothing lost or repeated`, async ({ page }) => {
    const user = `u${unique()}`;
    const ch = `private.${user}.inbox`;
    const name = `${transport}-${mode}`;
    await page.evaluate(([n, o]) => window.start(n, o), [name, {
      url: '/private/events/{channels}', pollUrl: '/private/poll/{channels}', channels: [ch],
      transport, mode, user, seconds: 2, minDelay: 100,
    }]);
    await waitFor(async () => (await subscribers(ch)) === 1, { what: 'subscribed' });
    const ids = [await publish(ch, 'one')];
    await waitMessages(page, name, 1, 'before expiry');
    // The first token expires within 2 s; the client renews it and goes on.
    const want = transport === 'sse' ? 'token-expired' : 'unauthorized';
    await waitFor(async () => (await state(page, name)).tokens.includes(want), { what: `a token for ${want}`, timeout: 8000 });
    await waitFor(async () => (await subscribers(ch)) === 1, { what: 'subscribed again' });
    ids.push(await publish(ch, 'two'));
    ids.push(await publish(ch, 'three'));
    const s = await waitMessages(page, name, 3, 'after the renewal');
    await page.evaluate((n) => window.stop(n), name);
    equal(s.messages.map((m) => m.data), ['one', 'two', 'three'], 'every message once, in order');
    equal(s.messages.map((m) => m.id), ids, 'ids');
    equal(s.tokens[0], 'start', 'a token before the first connection');
    equal(s.errors.filter((e) => e.fatal), [], 'no fatal error');
    equal(s.transport, transport, 'transport kept');
  });
}

test('demo page: sign in, a message in the private inbox, another inbox refused', async ({ browser }) => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));
  await page.goto(`${base}/`);
  const user = `d${unique()}`;
  await page.fill('#private-user', user);
  await page.click('#private-signin');
  await page.waitForFunction((u) => document.getElementById('private-state').textContent === `open as ${u}`, user);
  await page.click('#private-send');
  await page.waitForFunction((u) => [...document.querySelectorAll('#private-feed li.message')]
    .some((li) => li.textContent.endsWith(`hello ${u}`)), user);
  await page.click('#private-peek');
  await page.waitForFunction(() => [...document.querySelectorAll('#private-feed li')]
    .some((li) => / 403 channel private\.bob\.inbox is not granted by the token$/.test(li.textContent)));
  const cookie = (await context.cookies()).find((c) => c.name === 'channels_jwt');
  assert(cookie && cookie.value.split('.').length === 3, 'the page keeps its token in the cookie channels_jwt');
  equal(errors, [], 'no page errors');
  await context.close();
});

test('no uncaught errors in the test page', async ({ page }) => {
  equal(page.errors, [], 'page errors');
});

run({
  before: async () => {
    const browser = await launchChromium();
    return { browser, page: await newPage(browser) };
  },
  after: async (ctx) => ctx?.browser?.close(),
});
