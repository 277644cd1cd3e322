// www/channels.js in headless Chromium against conf-examples/demo.conf:
//   node t/js/browser-channels-test.mjs PUBLIC_BASE INTERNAL_BASE
// A blank test page on the public origin imports /channels.js; the tests drive it with
// page.evaluate and publish/delete through the internal port.
import { test, run, assert, equal, waitFor } from './runner.mjs';
import { launchChromium, routedPage } from './chromium.mjs';

const [base, internal] = process.argv.slice(2);
if (!base || !internal) {
  console.error('usage: node browser-channels-test.mjs PUBLIC_BASE INTERNAL_BASE');
  process.exit(2);
}

const unique = () => Math.random().toString(36).slice(2, 10);

// The test page: channels.js, a log per subscription, and FlakyES, an EventSource whose
// current stream the test can break, and whose later streams can be made to fail.
const PAGE = `<!doctype html><meta charset="utf-8"><title>channels.js test</title>
<script type="module">
import { subscribe } from '/channels.js';
class FlakyES {
  static instances = [];
  static mode = 'ok';
  constructor(url, opts) {
    this.url = url;
    this.listeners = {};
    this.real = new EventSource(FlakyES.mode === 'fail' ? '/nonexistent-stream' : url, opts);
    FlakyES.instances.push(this);
  }
  addEventListener(type, fn) {
    this.real.addEventListener(type, fn);
    (this.listeners[type] ??= []).push(fn);
  }
  close() { this.real.close(); }
  breakNow() {
    this.real.close();
    for (const fn of this.listeners.error ?? []) fn(new Event('error'));
  }
}
window.FlakyES = FlakyES;
window.subs = {};
window.start = (name, options) => {
  const log = { messages: [], opens: [], errors: [], gaps: [], deleted: [], transports: [] };
  const sub = subscribe({
    ...options,
    EventSource: options.flaky ? FlakyES : undefined,
    onMessage: (m) => log.messages.push(m),
    onOpen: (o) => log.opens.push(o.transport),
    onError: (e, info) => log.errors.push({ message: e.message, ...info }),
    onGap: (g) => log.gaps.push(g),
    onDeleted: (d) => log.deleted.push(d),
    onTransport: (t) => log.transports.push(t),
  });
  window.subs[name] = { sub, log };
};
window.state = (name) => {
  const { sub, log } = window.subs[name];
  return { ...log, transport: sub.transport, lastEventId: sub.lastEventId, channels: sub.channels, closed: sub.closed };
};
window.ready = true;
</script>`;

async function publish(channel, data, headers = {}) {
  const res = await fetch(`${internal}/pub/${encodeURIComponent(channel)}`, { method: 'POST', body: data, headers });
  assert(res.status === 201, `publish to ${channel}: HTTP ${res.status}`);
  return (await res.json()).id;
}

async function channelSubscribers(channel) {
  const res = await fetch(`${internal}/pub/${encodeURIComponent(channel)}`);
  return res.status === 200 ? (await res.json()).subscribers : 0;
}

const newPage = (browser) => routedPage(browser, `${base}/__channels-test.html`, PAGE);

const state = (page, name) => page.evaluate((n) => window.state(n), name);
const start = (page, name, options) => page.evaluate(([n, o]) => window.start(n, o), [name, options]);
const stop = (page, name) => page.evaluate((n) => window.subs[n].sub.close(), name);

async function waitMessages(page, name, count, what) {
  return waitFor(async () => {
    const s = await state(page, name);
    return s.messages.length >= count ? s : null;
  }, { what: `${count} messages (${what})` });
}

const URLS = { url: '/events/{channels}', pollUrl: '/poll/{channels}' };

function assertIncreasing(ids, what) {
  for (let i = 1; i < ids.length; i += 1) {
    const [a, b] = [ids[i - 1], ids[i]].map((id) => id.split('-').map(BigInt));
    assert(a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]), `${what}: ids in order (${ids[i - 1]} then ${ids[i]})`);
  }
}

for (const transport of ['sse', 'longpoll']) {
  test(`${transport}: several channels on one subscription, told apart (ids with . : @ ~)`, async ({ page }) => {
    const tag = unique();
    const chans = [`a.${tag}`, `b:${tag}`, `c@${tag}~`];
    await start(page, `multi-${transport}`, { ...URLS, channels: chans, transport, events: ['alert'] });
    await waitFor(async () => (await channelSubscribers(chans[2])) === 1, { what: 'subscribed to the third channel' });
    const ids = [
      await publish(chans[0], 'one'),
      await publish(chans[1], 'two\nlines'),
      await publish(chans[2], 'three', { 'Event-Type': 'alert', 'Content-Type': 'application/json' }),
      await publish(`other-${tag}`, 'not subscribed'),
      await publish(chans[0], 'four'),
    ];
    const s = await waitMessages(page, `multi-${transport}`, 4, 'four messages on three channels');
    await stop(page, `multi-${transport}`);
    equal(s.messages.map((m) => m.data), ['one', 'two\nlines', 'three', 'four'], 'data, in order');
    equal(s.messages.map((m) => m.id), [ids[0], ids[1], ids[2], ids[4]], 'ids are the publish ids');
    // SSE cannot tell the channel of a typed message on a multi-channel stream.
    const third = transport === 'sse' ? null : chans[2];
    equal(s.messages.map((m) => m.channel), [chans[0], chans[1], third, chans[0]], 'channels');
    equal(s.messages.map((m) => m.event), [null, null, 'alert', null], 'event types');
    if (transport === 'longpoll') equal(s.messages[2].contentType, 'application/json', 'content type (long poll)');
    equal(s.lastEventId, ids[4], 'cursor is the last id');
    equal(s.transport, transport, 'transport kept');
  });

  test(`${transport}: channel-gap when the cursor's successors were evicted, then the retained replay`, async ({ page }) => {
    const ch = `gap-${transport}-${unique()}`;
    const cursor = await publish(ch, 'first');
    const ids = [];
    for (let i = 1; i <= 201; i += 1) ids.push(await publish(ch, `m${i}`));   // history=200
    await start(page, `gap-${transport}`, { ...URLS, channels: [ch], transport, lastEventId: cursor });
    const s = await waitMessages(page, `gap-${transport}`, 200, 'the retained history');
    await stop(page, `gap-${transport}`);
    equal(s.gaps.length, 1, 'one gap reported');
    if (transport === 'sse') {
      equal([s.gaps[0].channel, s.gaps[0].last_event_id, s.gaps[0].oldest_event_id], [ch, cursor, ids[1]],
        'gap names the channel, the cursor and the oldest retained id');
    }
    equal(s.messages.length, 200, 'exactly the retained messages');
    equal(s.messages[0].data, 'm2', 'replay starts at the oldest retained');
    equal(s.messages[199].id, ids[200], 'and ends with the newest');
    assertIncreasing(s.messages.map((m) => m.id), 'replay');
  });
}

test('sse: channel-deleted drops that channel, keeps the others, closes after the last', async ({ page }) => {
  const tag = unique();
  const [d1, d2] = [`del1-${tag}`, `del2-${tag}`];
  await start(page, 'del', { ...URLS, channels: [d1, d2] });
  await waitFor(async () => (await channelSubscribers(d2)) === 1, { what: 'subscribed' });
  await publish(d1, 'before');
  let res = await fetch(`${internal}/pub/${d1}`, { method: 'DELETE' });
  equal(res.status, 200, 'DELETE answered');
  let s = await waitFor(async () => { const x = await state(page, 'del'); return x.deleted.length ? x : null; },
    { what: 'onDeleted' });
  equal(s.deleted.map((d) => d.channel), [d1], 'onDeleted names the channel');
  equal(s.channels, [d2], 'the subscription keeps the other channel');
  equal(s.closed, false, 'still open');
  await publish(d2, 'after');
  s = await waitMessages(page, 'del', 2, 'a message on the remaining channel');
  equal(s.messages.map((m) => [m.channel, m.data]), [[d1, 'before'], [d2, 'after']], 'messages');
  res = await fetch(`${internal}/pub/${d2}`, { method: 'DELETE' });
  equal(res.status, 200, 'second DELETE answered');
  s = await waitFor(async () => { const x = await state(page, 'del'); return x.closed ? x : null; },
    { what: 'closed after the last channel went' });
  equal(s.deleted.map((d) => d.channel), [d1, d2], 'both deletions reported');
});

test('longpoll: a deleted channel (410) ends the subscription', async ({ page }) => {
  const ch = `del-lp-${unique()}`;
  await start(page, 'del-lp', { ...URLS, channels: [ch], transport: 'longpoll' });
  await waitFor(async () => (await channelSubscribers(ch)) === 1, { what: 'long poll waiting' });
  const res = await fetch(`${internal}/pub/${ch}`, { method: 'DELETE' });
  equal(res.status, 200, 'DELETE answered');
  const s = await waitFor(async () => { const x = await state(page, 'del-lp'); return x.closed ? x : null; },
    { what: 'closed' });
  equal(s.deleted.map((d) => d.channel), [ch], 'onDeleted');
});

test('sse: a broken stream reconnects and resumes from the last id (last_event_id in the URL)', async ({ page }) => {
  const ch = `resume-${unique()}`;
  await start(page, 'resume', { ...URLS, channels: [ch], flaky: true, minDelay: 200 });
  await waitFor(async () => (await channelSubscribers(ch)) === 1, { what: 'subscribed' });
  const first = await publish(ch, 'm1');
  await waitMessages(page, 'resume', 1, 'm1');
  await page.evaluate(() => window.FlakyES.instances.at(-1).breakNow());
  await publish(ch, 'm2');
  await publish(ch, 'm3');
  const s = await waitMessages(page, 'resume', 3, 'm2 and m3 after the reconnect');
  await publish(ch, 'm4');
  const s2 = await waitMessages(page, 'resume', 4, 'm4 live');
  await stop(page, 'resume');
  equal(s2.messages.map((m) => m.data), ['m1', 'm2', 'm3', 'm4'], 'every message once, in order');
  const urls = await page.evaluate(() => window.FlakyES.instances.map((i) => i.url));
  assert(urls.length >= 2, `reconnected (${urls.length} streams)`);
  assert(urls[1].endsWith(`last_event_id=${encodeURIComponent(first)}`), `second stream resumes from m1: ${urls[1]}`);
  equal(s.errors[0].transport, 'sse', 'the break was reported');
});

test('auto: EventSource failing after m1 -> long polling resumes from m1', async ({ page }) => {
  const ch = `switch-${unique()}`;
  await start(page, 'switch', { ...URLS, channels: [ch], flaky: true, minDelay: 100, maxDelay: 400 });
  await waitFor(async () => (await channelSubscribers(ch)) === 1, { what: 'subscribed' });
  await publish(ch, 'm1');
  await waitMessages(page, 'switch', 1, 'm1 over SSE');
  await page.evaluate(() => {
    window.FlakyES.mode = 'fail';
    window.FlakyES.instances.at(-1).breakNow();
  });
  await publish(ch, 'm2');      // while nothing is connected: must come from the cursor
  await waitFor(async () => (await state(page, 'switch')).transport === 'longpoll', { what: 'switch to long polling' });
  const s = await waitMessages(page, 'switch', 2, 'm2 replayed by the long poll');
  await waitFor(async () => (await channelSubscribers(ch)) === 1, { what: 'long poll waiting' });
  await publish(ch, 'm3');
  const s2 = await waitMessages(page, 'switch', 3, 'm3 live over long polling');
  await stop(page, 'switch');
  equal(s2.messages.map((m) => [m.data, m.transport]), [['m1', 'sse'], ['m2', 'longpoll'], ['m3', 'longpoll']],
    'every message once, across the switch');
  equal(s.transports.map((t) => t.transport), ['sse', 'longpoll'], 'transports');
  const failed = await page.evaluate(() => window.FlakyES.instances.filter((i) => i.real.url.endsWith('/nonexistent-stream')).length);
  equal(failed, 3, 'three failed EventSource attempts before switching');
});

test('backoff: delays double up to maxDelay, with jitter in [cap/2, cap]', async ({ page }) => {
  await start(page, 'backoff', { url: '/nonexistent/{channels}', channels: ['x'], minDelay: 50, maxDelay: 400 });
  const s = await waitFor(async () => { const x = await state(page, 'backoff'); return x.errors.length >= 6 ? x : null; },
    { what: 'six failed attempts', timeout: 15000 });
  await stop(page, 'backoff');
  const delays = s.errors.slice(0, 6).map((e) => e.delay);
  delays.forEach((d, i) => {
    const cap = Math.min(400, 50 * 2 ** i);
    assert(d >= cap / 2 && d <= cap, `attempt ${i}: delay ${d} within [${cap / 2}, ${cap}]`);
  });
  equal(s.transport, 'sse', 'no pollUrl: stays on SSE');
  equal(s.errors.every((e) => e.fatal === false), true, 'never fatal for SSE');
});

test('close() ends the request on the server and stops delivery', async ({ page }) => {
  for (const transport of ['sse', 'longpoll']) {
    const ch = `close-${transport}-${unique()}`;
    await start(page, `close-${transport}`, { ...URLS, channels: [ch], transport });
    await waitFor(async () => (await channelSubscribers(ch)) === 1, { what: `${transport} subscribed` });
    await stop(page, `close-${transport}`);
    await waitFor(async () => (await channelSubscribers(ch)) === 0, { what: `${transport} subscriber gone on the server` });
    await publish(ch, 'too late');
    const other = `close-probe-${unique()}`;
    // A probe subscription proves time passed for any late delivery to arrive.
    await start(page, `probe-${transport}`, { ...URLS, channels: [other], transport });
    await waitFor(async () => (await channelSubscribers(other)) === 1, { what: 'probe subscribed' });
    await publish(other, 'probe');
    await waitMessages(page, `probe-${transport}`, 1, 'probe message');
    await stop(page, `probe-${transport}`);
    equal((await state(page, `close-${transport}`)).messages.length, 0, `${transport}: nothing after close()`);
  }
});

test('longpoll: a 4xx answer is fatal (no retries)', async ({ page }) => {
  await start(page, 'fatal', { url: null, pollUrl: '/poll/{channels}', channels: ['bad!id'], transport: 'longpoll' });
  const s = await waitFor(async () => { const x = await state(page, 'fatal'); return x.closed ? x : null; },
    { what: 'closed after a 404' });
  equal(s.errors.length, 1, 'one error');
  equal([s.errors[0].fatal, s.errors[0].delay], [true, null], 'fatal, no retry');
  assert(/HTTP 404/.test(s.errors[0].message), `error says HTTP 404: ${s.errors[0].message}`);
});

test('no uncaught errors in the page', async ({ page }) => {
  equal(page.errors, [], 'page errors');
});

run({
  before: async () => {
    const browser = await launchChromium();
    return { browser, page: await newPage(browser) };
  },
  after: async (ctx) => ctx?.browser?.close(),
});
