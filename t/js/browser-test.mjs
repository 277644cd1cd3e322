// The demo page (www/) in headless Chromium, against nginx running conf-examples/demo.conf.
//   node t/js/browser-test.mjs PUBLIC_BASE INTERNAL_BASE SCREENSHOT.png
// PUBLIC_BASE serves the page, /events/, /poll/, /publish/ and /status; INTERNAL_BASE is
// the publish port (/pub/<ch>), used to publish "from a backend" and to read channel info.
import { statSync } from 'node:fs';
import { test, run, assert, equal, waitFor } from './runner.mjs';
import { launchChromium, watchPage } from './chromium.mjs';

const [base, internal, screenshot] = process.argv.slice(2);
if (!base || !internal || !screenshot) {
  console.error('usage: node browser-test.mjs PUBLIC_BASE INTERNAL_BASE SCREENSHOT');
  process.exit(2);
}

const unique = () => Math.random().toString(36).slice(2, 10);

async function publish(channel, data, headers = {}) {
  const res = await fetch(`${internal}/pub/${channel}`, { method: 'POST', body: data, headers });
  assert(res.status === 201, `publish to ${channel}: HTTP ${res.status}`);
  return res.json();
}

async function channelSubscribers(channel) {
  const res = await fetch(`${internal}/pub/${channel}`);
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

run({
  before: async () => ({ browser: await launchChromium() }),
  after: async (ctx) => ctx?.browser?.close(),
});
