// A real browser's EventSource against the module (driven by t/sse-browser.t):
//   node t/js/sse-browser.mjs PUBLIC_BASE INTERNAL_BASE
// Headless Chromium loads PUBLIC_BASE/sse-page.html (written into the test prefix), whose
// EventSource subscribes to /events/<channel> (sse_retry 200ms). Messages published from here
// reach the page; then, while this script keeps publishing, it asks the Perl side for
// `nginx -s reload` (prints "RELOAD", waits for a "RELOADED" line on stdin). The page must
// reconnect by itself (same EventSource object) and end up with every message exactly once,
// in order, including those published while it was disconnected.
import { setTimeout as sleep } from 'node:timers/promises';
import { test, run, assert, equal, waitFor } from './runner.mjs';
import { launchChromium, watchPage } from './chromium.mjs';
import { reloadNginx, fetchAgain } from './reload-peer.mjs';

const [base, internal] = process.argv.slice(2);
if (!base || !internal) {
  console.error('usage: node sse-browser.mjs PUBLIC_BASE INTERNAL_BASE');
  process.exit(2);
}

async function publish(channel, data) {
  const res = await fetchAgain(`${internal}/pub/${channel}`, { method: 'POST', body: data });
  assert(res.status === 201, `publish to ${channel}: HTTP ${res.status}`);
  return (await res.json()).id;
}

async function subscribers(channel) {
  const res = await fetchAgain(`${internal}/pub/${channel}`);
  return res.status === 200 ? (await res.json()).subscribers : 0;
}

const state = (page) => page.evaluate(() => ({
  got: window.got, opens: window.opens, errors: window.errors, ready: window.es.readyState,
  same: window.es === window.firstEs,
}));

let browser;
let page;
const problems = [];
const channel = `browser-${Math.random().toString(36).slice(2, 10)}`;

test('the page subscribes and receives messages', async () => {
  await page.goto(`${base}/sse-page.html#${channel}`);
  await waitFor(async () => (await state(page)).opens === 1, { what: 'EventSource open' });
  await waitFor(async () => (await subscribers(channel)) === 1, { what: 'one subscriber' });
  const sent = [];
  for (let i = 1; i <= 5; i++) sent.push({ id: await publish(channel, `m${i}`), data: `m${i}` });
  await waitFor(async () => (await state(page)).got.length >= 5, { what: 'five messages on the page' });
  equal((await state(page)).got.map((e) => [e.id, e.data]), sent.map((e) => [e.id, e.data]),
    'the page has m1..m5 with their ids');
});

test('reload: the EventSource reconnects by itself and gets every message once', async () => {
  const before = (await state(page)).got.slice();
  const sent = before.slice();    // everything published to the channel, in publish order
  let stop = false;
  let n = 0;
  const publishTimes = [];
  const publisher = (async () => {
    while (!stop) {
      n += 1;
      const data = `c${n}`;
      const id = await publish(channel, data);
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
  await whilePublishing(waitFor(async () => (await state(page)).opens >= 2,
    { what: 'the page reconnected (a second open)', timeout: 10000 }));
  const reopened = await page.evaluate(() => window.openTimes[1]);
  const atReopen = n;
  await whilePublishing(waitFor(() => n >= atReopen + 10, { what: 'ten more messages after the reconnect' }));
  stop = true;
  await publisher;
  const last = sent[sent.length - 1];
  await waitFor(async () => (await state(page)).got.some((e) => e.id === last.id),
    { what: `the last message (${last.data}) on the page`, timeout: 10000 });
  const s = await state(page);
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

test('no page errors', async () => {
  equal(problems, [], 'page errors and console errors');
});

run({
  before: async () => {
    browser = await launchChromium();
    page = await browser.newPage();
    watchPage(page, problems);
  },
  after: async () => {
    if (browser) await browser.close();
  },
});
