// A real browser, headless Chromium (Debian's, driven by playwright-core), driven by t/browser.t:
//   node t/js/browser-test.mjs PUBLIC_BASE INTERNAL_BASE SCREENSHOT.png PAGE_BASE
// 1. The demo page (www/) against nginx running conf-examples/demo.conf: PUBLIC_BASE serves
//    the page, /events/, /poll/, /publish/ and /status; INTERNAL_BASE is the publish port
//    (/pub/<ch>), used to publish "from a backend" and to read channel info.
// 2. A bare EventSource: PAGE_BASE serves /sse-page.html (written into the test prefix), whose
//    EventSource subscribes to PAGE_BASE/events/<channel> (sse_retry 200ms), and /pub/<ch>.
//    Messages published from here reach the page; then, while this script keeps publishing,
//    it asks the Perl side for `nginx -s reload` (prints "RELOAD", waits for a "RELOADED"
//    line on stdin). The page must reconnect by itself (same EventSource object) and end up
//    with every message exactly once, in order, including those published while it was
//    disconnected.
import { statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { test, run, assert, equal, waitFor } from './runner.mjs';
import { launchChromium, watchPage } from './chromium.mjs';
import { reloadNginx, fetchAgain } from './reload-peer.mjs';

const [base, internal, screenshot, pageBase] = process.argv.slice(2);
if (!base || !internal || !screenshot || !pageBase) {
  console.error('usage: node browser-test.mjs PUBLIC_BASE INTERNAL_BASE SCREENSHOT PAGE_BASE');
  process.exit(2);
}

const unique = () => Math.random().toString(36).slice(2, 10);

// Publishes on a publish location (INTERNAL_BASE's by default); returns the JSON answer.
async function publish(channel, data, headers = {}, origin = internal) {
  const res = await fetchAgain(`${origin}/pub/${channel}`, { method: 'POST', body: data, headers });
  assert(res.status === 201, `publish to ${channel}: HTTP ${res.status}`);
  return res.json();
}

async function channelSubscribers(channel, origin = internal) {
  const res = await fetchAgain(`${origin}/pub/${channel}`);
  if (res.status !== 200) return 0;
  return (await res.json()).subscribers;
}

// Texts of the messages shown in a feed (notes left out), oldest first.
async function feedTexts(page, feed) {
  return page.$$eval(`#${feed} li:not(.note) .data`, (els) => els.map((e) => e.textContent).reverse());
}

async function feedEvents(page, feed) {
  return page.$$eval(`#${feed} li:not(.note)`, (els) =>
    els.map((li) => li.querySelector('.event')?.textContent ?? null).reverse());
}

async function waitInBothFeeds(page, text, what) {
  for (const feed of ['sse-feed', 'poll-feed']) {
    await waitFor(async () => (await feedTexts(page, feed)).includes(text), { what: `${what} in #${feed}` });
  }
  for (const feed of ['sse-feed', 'poll-feed']) {
    const n = (await feedTexts(page, feed)).filter((t) => t === text).length;
    equal(n, 1, `${what}: shown once in #${feed}`);
  }
}

async function openDemo(browser, channel, { initScript, route, problems } = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  if (initScript) await context.addInitScript(initScript);
  if (route) await context.route(route.pattern, route.handler);
  const page = await context.newPage();
  watchPage(page, problems);
  await page.goto(`${base}/?ch=${channel}`);
  return { context, page };
}

function noProblems(problems, allow = []) {
  const left = problems.filter((p) => !allow.some((re) => re.test(p)));
  assert(left.length === 0, `the page reported: ${left.join('; ')}`);
}

// ---- 1. the demo page

test('demo page connects: EventSource live feed and long-poll view', async (ctx) => {
  ctx.channel = `live-${unique()}`;
  ctx.problems = [];
  const { page } = await openDemo(ctx.browser, ctx.channel, { problems: ctx.problems });
  ctx.page = page;
  equal(await page.title(), 'nginx-channels demo', 'page title');
  await waitFor(async () => (await page.textContent('#sse-state')) === 'open', { what: 'SSE badge "open"' });
  equal(await page.textContent('#sse-transport'), 'EventSource', 'live feed transport');
  equal(await page.textContent('#poll-state'), 'polling', 'long-poll badge');
  await waitFor(async () => (await channelSubscribers(ctx.channel)) >= 2, { what: 'two subscribers on the channel' });
  noProblems(ctx.problems);
});

test('a message published by a backend shows up in both views', async (ctx) => {
  const text = `from a backend ${unique()}`;
  const pub = await publish(ctx.channel, text);
  await waitInBothFeeds(ctx.page, text, 'backend message');
  const ids = await ctx.page.$$eval('#sse-feed li:not(.note)', (els) => els.map((li) => li.dataset.id));
  assert(ids.includes(pub.id), `the live feed shows id ${pub.id}`);
  noProblems(ctx.problems);
});

test('publishing from the form shows up in both views (multi-line, with event type)', async (ctx) => {
  const { page } = ctx;
  const text = `typed in the form ${unique()}\nsecond line: ünïcødé ✓`;
  await page.fill('#message', text);
  await page.fill('#event-type', 'alert');
  await page.click('#publish-button');
  await waitFor(async () => (await page.textContent('#publish-result')).startsWith('201 '), { what: 'publish result 201' });
  const result = JSON.parse((await page.textContent('#publish-result')).slice(4));
  equal(result.channel, ctx.channel, 'publish answer channel');
  await waitInBothFeeds(page, text, 'form message');
  for (const feed of ['sse-feed', 'poll-feed']) {
    const events = await feedEvents(page, feed);
    equal(events[events.length - 1], 'alert', `event type shown in #${feed}`);
  }
  equal(await page.inputValue('#message'), '', 'the form is cleared after publishing');
  noProblems(ctx.problems);
});

test('a new event type typed in the form reaches the live feed too', async (ctx) => {
  const { page } = ctx;
  const text = `custom type ${unique()}`;
  await page.fill('#message', text);
  await page.fill('#event-type', 'price.update');
  await page.click('#publish-button');
  await waitInBothFeeds(page, text, 'message with a new event type');
  const events = await feedEvents(page, 'sse-feed');
  equal(events[events.length - 1], 'price.update', 'event type in the live feed');
  noProblems(ctx.problems);
});

test('status panel: subscribers, messages/s, zone usage from /status', async (ctx) => {
  const { page } = ctx;
  await waitFor(async () => Number(await page.textContent('#status-subscribers')) >= 2, { what: 'subscribers >= 2' });
  const zone = await page.textContent('#status-zone');
  assert(/ of 16\.0 MiB \(demo\)$/.test(zone), `zone usage text: ${zone}`);
  const meter = await page.$eval('#status-zone-meter', (m) => m.value);
  assert(meter > 0 && meter < 1, `zone meter ${meter}`);
  const workers = await page.$$eval('#status-workers tr', (rows) => rows.length);
  equal(workers, 2, 'one row per worker');
  // A burst of messages: the rate shown must rise above zero.
  const burst = async () => {
    for (let i = 0; i < 20; i += 1) await publish(`rate-${unique()}`, 'x');
  };
  await burst();
  await waitFor(async () => {
    if (Number(await page.textContent('#status-rate')) > 0) return true;
    await burst();
    return false;
  }, { timeout: 8000, interval: 300, what: 'messages/s above 0' });
  await waitFor(async () => Number(await page.textContent('#status-published')) >= 20,
    { what: 'published counter >= 20' });
  noProblems(ctx.problems);
});

test('screenshot of the demo', async (ctx) => {
  await ctx.page.screenshot({ path: screenshot, fullPage: true });
  const size = statSync(screenshot).size;
  assert(size > 20000, `screenshot ${screenshot} is ${size} bytes`);
  await ctx.page.context().close();
});

test('without EventSource the live feed falls back to long polling', async (ctx) => {
  const channel = `fallback-${unique()}`;
  const problems = [];
  const { page, context } = await openDemo(ctx.browser, channel, {
    problems,
    initScript: () => { delete window.EventSource; },
  });
  equal(await page.evaluate(() => typeof window.EventSource), 'undefined', 'EventSource removed from the page');
  await waitFor(async () => (await page.textContent('#sse-transport')) === 'long-poll (fallback)', { what: 'fallback transport shown' });
  equal(await page.evaluate(() => document.body.dataset.sseTransport), 'longpoll', 'live feed transport');
  await waitFor(async () => (await channelSubscribers(channel)) >= 2, { what: 'two long polls waiting' });
  const text = `no EventSource here ${unique()}`;
  await page.fill('#message', text);
  await page.click('#publish-button');
  await waitInBothFeeds(page, text, 'form message without EventSource');
  const text2 = `and from a backend ${unique()}`;
  await waitFor(async () => (await channelSubscribers(channel)) >= 2, { what: 'both polls waiting again' });
  await publish(channel, text2);
  await waitInBothFeeds(page, text2, 'backend message without EventSource');
  noProblems(problems);
  await context.close();
});

test('when EventSource keeps failing the live feed switches to long polling', async (ctx) => {
  const channel = `failing-${unique()}`;
  const problems = [];
  let refused = 0;
  const { page, context } = await openDemo(ctx.browser, channel, {
    problems,
    route: {
      pattern: (url) => url.pathname.startsWith('/events/'),
      handler: (route) => {
        refused += 1;
        return route.fulfill({ status: 503, contentType: 'text/plain', body: 'overloaded\n' });
      },
    },
  });
  await waitFor(async () => (await page.textContent('#sse-transport')) === 'long-poll (fallback)', { what: 'fallback after failures' });
  assert(refused >= 3, `EventSource tried ${refused} times before switching`);
  const notes = await page.$$eval('#sse-feed li.note', (els) => els.map((e) => e.textContent));
  assert(notes.some((n) => /EventSource failed 3 times/.test(n)), `note about the switch: ${notes.join(' / ')}`);
  await waitFor(async () => (await channelSubscribers(channel)) >= 2, { what: 'two long polls waiting' });
  const text = `after the switch ${unique()}`;
  await publish(channel, text);
  await waitInBothFeeds(page, text, 'message after switching');
  noProblems(problems, [/status of 503/]);
  await context.close();
});

// ---- 2. a bare EventSource across a reload (last: the reload ends every stream)

const pageState = (page) => page.evaluate(() => ({
  got: window.got, opens: window.opens, errors: window.errors, ready: window.es.readyState,
  same: window.es === window.firstEs,
}));

test('the page subscribes and receives messages', async (ctx) => {
  ctx.pageChannel = `browser-${unique()}`;
  ctx.pageProblems = [];
  ctx.ssePage = await ctx.browser.newPage();
  watchPage(ctx.ssePage, ctx.pageProblems);
  const { ssePage: page, pageChannel: channel } = ctx;
  await page.goto(`${pageBase}/sse-page.html#${channel}`);
  await waitFor(async () => (await pageState(page)).opens === 1, { what: 'EventSource open' });
  await waitFor(async () => (await channelSubscribers(channel, pageBase)) === 1, { what: 'one subscriber' });
  const sent = [];
  for (let i = 1; i <= 5; i++) sent.push({ id: (await publish(channel, `m${i}`, {}, pageBase)).id, data: `m${i}` });
  await waitFor(async () => (await pageState(page)).got.length >= 5, { what: 'five messages on the page' });
  equal((await pageState(page)).got.map((e) => [e.id, e.data]), sent.map((e) => [e.id, e.data]),
    'the page has m1..m5 with their ids');
});

test('reload: the EventSource reconnects by itself and gets every message once', async (ctx) => {
  const { ssePage: page, pageChannel: channel } = ctx;
  const before = (await pageState(page)).got.slice();
  const sent = before.slice();    // everything published to the channel, in publish order
  let stop = false;
  let n = 0;
  const publishTimes = [];
  const publisher = (async () => {
    while (!stop) {
      n += 1;
      const data = `c${n}`;
      const { id } = await publish(channel, data, {}, pageBase);
      sent.push({ id, data });
      publishTimes.push(Date.now());
      await sleep(20);
    }
  })();
  // A failed publish ends the test at once (not as an unhandled rejection after it).
  const publishFailed = publisher.then(() => new Promise(() => {}));
  const whilePublishing = (step) => Promise.race([step, publishFailed]);
  await whilePublishing(waitFor(() => n >= 10, { what: 'ten messages published before the reload' }));
  await whilePublishing(reloadNginx());
  await whilePublishing(waitFor(async () => (await pageState(page)).opens >= 2,
    { what: 'the page reconnected (a second open)', timeout: 10000 }));
  const reopened = await page.evaluate(() => window.openTimes[1]);
  const atReopen = n;
  await whilePublishing(waitFor(() => n >= atReopen + 10, { what: 'ten more messages after the reconnect' }));
  stop = true;
  await publisher;
  const last = sent[sent.length - 1];
  await waitFor(async () => (await pageState(page)).got.some((e) => e.id === last.id),
    { what: `the last message (${last.data}) on the page`, timeout: 10000 });
  const s = await pageState(page);
  equal(s.got.map((e) => e.data), sent.map((e) => e.data), 'every message exactly once, in order');
  equal(s.got.map((e) => e.id), sent.map((e) => e.id), 'with the publish ids');
  assert(s.errors >= 1, `the page saw the stream end (error events: ${s.errors})`);
  equal(s.opens, 2, 'exactly one reconnect');
  assert(s.same && s.ready === 1, 'the same EventSource object, open again (automatic reconnect, no new one)');
  // Messages published between the end of the old stream and the reconnect came by replay.
  const disconnectedAt = await page.evaluate(() => window.errorTimes[0]);
  const meanwhile = publishTimes.filter((t) => t > disconnectedAt && t < reopened).length;
  assert(meanwhile >= 1, `some messages were published while the page was disconnected (${meanwhile})`);
  console.log(`NOTE ${meanwhile} messages published while the page was disconnected; ${sent.length} in all`);
  console.log(`GOTIDS ${s.got.map((e) => e.id).join(',')}`);
});

test('no page errors on the EventSource page', async (ctx) => {
  equal(ctx.pageProblems, [], 'page errors and console errors');
});

run({
  before: async () => ({ browser: await launchChromium() }),
  after: async (ctx) => ctx?.browser?.close(),
});
