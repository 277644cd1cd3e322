// The module's SSE streams read by the npm `eventsource` package (a WHATWG-conformant
// EventSource for Node.js), against conf-examples/demo.conf:
//   node t/js/eventsource-test.mjs PUBLIC_BASE INTERNAL_BASE
// What a browser's EventSource would see: data split into lines and joined back exactly as
// the WHATWG parser does (CRLF, CR, LF, blank lines, leading spaces, Unicode), event types,
// multi-channel event names, and a reconnect that sends Last-Event-ID and resumes.
import { EventSource } from 'eventsource';
import { test, run, assert, equal, waitFor } from './runner.mjs';

const [base, internal] = process.argv.slice(2);
if (!base || !internal) {
  console.error('usage: node eventsource-test.mjs PUBLIC_BASE INTERNAL_BASE');
  process.exit(2);
}

const unique = () => Math.random().toString(36).slice(2, 10);

async function publish(channel, data, headers = {}) {
  const res = await fetch(`${internal}/pub/${channel}`, { method: 'POST', body: data, headers });
  assert(res.status === 201, `publish to ${channel}: HTTP ${res.status}`);
  return (await res.json()).id;
}

async function channelSubscribers(channel) {
  const res = await fetch(`${internal}/pub/${channel}`);
  return res.status === 200 ? (await res.json()).subscribers : 0;
}

// Opens an EventSource and records what it dispatches for the given event names.
async function listen(url, names = ['message'], init = {}) {
  const es = new EventSource(url, init);
  const got = [];
  const errors = [];
  for (const name of names) {
    es.addEventListener(name, (e) => got.push({ type: e.type, data: e.data, id: e.lastEventId }));
  }
  es.addEventListener('error', (e) => errors.push(e.message ?? 'error'));
  await waitFor(() => es.readyState === EventSource.OPEN, { what: `${url} open` });
  return { es, got, errors };
}

// What the WHATWG parser makes of data published as-is: every CRLF, CR and LF is a line
// end, and the lines are joined with LF.
const whatwg = (s) => s.replace(/\r\n|\r|\n/g, '\n');

const PAYLOADS = [
  'plain',
  'two\nlines',
  'crlf\r\nline',
  'lone\rcr',
  'blank\r\n\r\nlines\n\ninside\r\rtoo',
  ' leading space',
  '  two leading spaces',
  'trailing newline\n',
  'trailing cr\r',
  '\n',
  '',
  'looks like fields:\nid: 1\nevent: x\ndata: y\nretry: 5\n: comment',
  'unicode: héllo wörld ✓ 😀 中文 עברית',
  `long ${'x'.repeat(70000)} end`,
];

test('data arrives exactly as the WHATWG parser defines (multi-line, CRLF, CR, unicode, empty)', async () => {
  const ch = `whatwg-${unique()}`;
  const { es, got, errors } = await listen(`${base}/events/${ch}`);
  await waitFor(async () => (await channelSubscribers(ch)) === 1, { what: 'subscribed' });
  const ids = [];
  for (const p of PAYLOADS) ids.push(await publish(ch, p));
  await waitFor(() => got.length >= PAYLOADS.length, { what: `${PAYLOADS.length} events (got ${got.length})` });
  es.close();
  PAYLOADS.forEach((p, i) => {
    equal(got[i].data, whatwg(p), `payload ${i} (${JSON.stringify(p.slice(0, 30))})`);
    equal(got[i].id, ids[i], `payload ${i}: lastEventId is the publish id`);
    equal(got[i].type, 'message', `payload ${i}: type`);
  });
  equal(got.length, PAYLOADS.length, 'nothing extra');
  equal(errors, [], 'no errors');
});

test('event types: a typed message goes to its listener, not to onmessage', async () => {
  const ch = `typed-${unique()}`;
  const { es, got } = await listen(`${base}/events/${ch}`, ['message', 'price', 'news.flash']);
  await waitFor(async () => (await channelSubscribers(ch)) === 1, { what: 'subscribed' });
  await publish(ch, '101.5', { 'Event-Type': 'price' });
  await publish(ch, 'untyped');
  await fetch(`${internal}/pub/${ch}?event=news.flash`, { method: 'POST', body: 'breaking' });
  await waitFor(() => got.length >= 3, { what: 'three events' });
  es.close();
  equal(got.map((e) => [e.type, e.data]), [['price', '101.5'], ['message', 'untyped'], ['news.flash', 'breaking']],
    'types and data');
});

test('several channels: untyped events are named after their channel', async () => {
  const tag = unique();
  const [a, b] = [`ma-${tag}`, `mb-${tag}`];
  const { es, got } = await listen(`${base}/events/${a},${b}`, ['message', a, b]);
  await waitFor(async () => (await channelSubscribers(b)) === 1, { what: 'subscribed' });
  await publish(a, 'to a');
  await publish(b, 'to b\r\nsecond');
  await waitFor(() => got.length >= 2, { what: 'two events' });
  es.close();
  equal(got.map((e) => [e.type, e.data]), [[a, 'to a'], [b, 'to b\nsecond']], 'event names are channel ids');
});

test('channel-deleted arrives as its own event with JSON data', async () => {
  const ch = `gone-${unique()}`;
  const { es, got } = await listen(`${base}/events/${ch}`, ['message', 'channel-deleted']);
  await waitFor(async () => (await channelSubscribers(ch)) === 1, { what: 'subscribed' });
  await publish(ch, 'last words');
  const res = await fetch(`${internal}/pub/${ch}`, { method: 'DELETE' });
  equal(res.status, 200, 'DELETE');
  await waitFor(() => got.length >= 2, { what: 'message and channel-deleted' });
  es.close();
  equal(got[0].data, 'last words', 'the message first');
  equal(got[1].type, 'channel-deleted', 'then channel-deleted');
  equal(JSON.parse(got[1].data), { channel: ch }, 'its data names the channel');
});

test('reconnect: the client sends Last-Event-ID and the stream resumes after it', async () => {
  const ch = `reconnect-${unique()}`;
  const requests = [];
  let cut = false;
  // A fetch that records each request's Last-Event-ID and ends the first response after its
  // first event, as a dropped connection would (the server side stays as it is).
  const cuttingFetch = async (url, init) => {
    const headers = new Headers(init.headers);
    requests.push(headers.get('last-event-id'));
    const controller = new AbortController();
    init.signal?.addEventListener('abort', () => controller.abort());
    const res = await fetch(url, { ...init, signal: controller.signal });
    if (requests.length > 1) return res;
    const reader = res.body.getReader();
    let seen = '';
    const body = new ReadableStream({
      async pull(out) {
        const { value, done } = await reader.read();
        if (done) { out.close(); return; }
        out.enqueue(value);
        seen += new TextDecoder().decode(value);
        if (/\n\n/.test(seen.replace(/^(:[^\n]*\n\n)+/, '')) && /data:/.test(seen)) {
          cut = true;
          controller.abort();
          out.close();
        }
      },
      cancel() { controller.abort(); },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  const { es, got } = await listen(`${base}/events/${ch}`, ['message'], { fetch: cuttingFetch });
  await waitFor(async () => (await channelSubscribers(ch)) === 1, { what: 'subscribed' });
  const m1 = await publish(ch, 'm1');
  await waitFor(() => got.length >= 1 && cut, { what: 'm1, then the cut' });
  const m2 = await publish(ch, 'm2');      // while the client waits to reconnect
  await waitFor(() => got.length >= 2, { what: 'm2 after the reconnect', timeout: 15000 });
  const m3 = await publish(ch, 'm3');
  await waitFor(() => got.length >= 3, { what: 'm3 live' });
  es.close();
  equal(requests, [null, m1], 'first request without Last-Event-ID, the reconnect with m1');
  equal(got.map((e) => [e.data, e.id]), [['m1', m1], ['m2', m2], ['m3', m3]], 'each message once, in order');
});

test('a malformed Last-Event-ID is ignored, not an error (EventSource would stop)', async () => {
  const ch = `badcursor-${unique()}`;
  const res = await fetch(`${base}/events/${ch}`, { headers: { 'Last-Event-ID': 'not-an-id' } });
  equal(res.status, 200, 'status');
  assert(/^text\/event-stream/.test(res.headers.get('content-type')), 'content type');
  await res.body.cancel();
});

run();
