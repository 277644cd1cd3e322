// The npm `eventsource` client (a WHATWG-conformant EventSource for Node.js) against the
// module (driven by t/sse-eventsource.t):
//   node t/js/sse-eventsource.mjs PUBLIC_BASE INTERNAL_BASE
// Data published with LF, CRLF and CR line ends, blank lines, leading spaces and colons, NUL,
// and UTF-8 (also long, so multi-byte characters straddle reads) must come out of the client
// exactly as the WHATWG parser defines; typed events go to their listeners; several channels
// name their events; and when `nginx -s reload` (done by the Perl side on "RELOAD") ends the
// stream, the client reconnects on its own with Last-Event-ID and misses nothing.
import { setTimeout as sleep } from 'node:timers/promises';
import { EventSource } from 'eventsource';
import { test, run, assert, equal, waitFor } from './runner.mjs';
import { reloadNginx, fetchAgain } from './reload-peer.mjs';

const [base, internal] = process.argv.slice(2);
if (!base || !internal) {
  console.error('usage: node sse-eventsource.mjs PUBLIC_BASE INTERNAL_BASE');
  process.exit(2);
}

const tag = Math.random().toString(36).slice(2, 10);

async function publish(channel, data, headers = {}) {
  const res = await fetchAgain(`${internal}/pub/${channel}`, { method: 'POST', body: data, headers });
  assert(res.status === 201, `publish to ${channel}: HTTP ${res.status}`);
  return (await res.json()).id;
}

async function subscribers(channel) {
  const res = await fetchAgain(`${internal}/pub/${channel}`);
  return res.status === 200 ? (await res.json()).subscribers : 0;
}

// A client that records every event it dispatches (for the names given) and each request's
// Last-Event-ID header.
function client(path, names = ['message']) {
  const requests = [];
  const fetchRecording = (url, init) => {
    requests.push(new Headers(init.headers).get('last-event-id'));
    return fetch(url, init);
  };
  const es = new EventSource(`${base}${path}`, { fetch: fetchRecording });
  const got = [];
  let opens = 0;
  let errors = 0;
  for (const name of names) {
    es.addEventListener(name, (e) => got.push({ type: e.type, data: e.data, id: e.lastEventId }));
  }
  es.addEventListener('open', () => { opens += 1; });
  es.addEventListener('error', () => { errors += 1; });
  return { es, got, requests, opens: () => opens, errors: () => errors };
}

// What the WHATWG parser makes of the data: CRLF, CR and LF each end a line; lines are joined
// with LF.
const whatwg = (s) => s.replace(/\r\n|\r|\n/g, '\n');

const PAYLOADS = [
  ['LF lines', 'first\nsecond\nthird'],
  ['CRLF lines', 'first\r\nsecond\r\nthird'],
  ['CR lines', 'first\rsecond\rthird'],
  ['mixed, with blank lines', 'a\r\n\r\nb\n\nc\r\rd\n\r\ne'],
  ['CRLF at the end', 'ends with crlf\r\n'],
  ['CR at the end', 'ends with cr\r'],
  ['only CRLF', '\r\n'],
  ['empty', ''],
  ['leading spaces', '  two spaces\n one space\nnone'],
  ['lines looking like fields and comments', ': comment?\ndata: nested\nid: 99\nevent: x\nretry: 10'],
  ['NUL', 'nul\u0000inside'],
  ['UTF-8', 'héllo wörld ✓ 😀 中文 עברית Ω ẞ'],
  ['BOM inside', '\uFEFFbom at the start of the data'],
  ['long UTF-8', `${'é😀中'.repeat(20000)} end`],
];

test('data comes out exactly as the WHATWG parser defines (LF, CRLF, CR, empty, spaces, UTF-8)', async () => {
  const ch = `es-data-${tag}`;
  const c = client(`/events/${ch}`);
  await waitFor(async () => (await subscribers(ch)) === 1, { what: 'subscribed' });
  const ids = [];
  for (const [, p] of PAYLOADS) ids.push(await publish(ch, p, { 'Content-Type': 'text/plain; charset=utf-8' }));
  await waitFor(() => c.got.length >= PAYLOADS.length, { what: `${PAYLOADS.length} events` });
  c.es.close();
  PAYLOADS.forEach(([label, p], i) => {
    equal(c.got[i].data, whatwg(p), label);
    equal(c.got[i].id, ids[i], `${label}: lastEventId is the publish id`);
    equal(c.got[i].type, 'message', `${label}: a message event`);
  });
  equal(c.got.length, PAYLOADS.length, 'no extra events');
});

test('typed events reach their listeners; several channels name untyped events', async () => {
  const [a, b] = [`es-a-${tag}`, `es-b-${tag}`];
  const c = client(`/events/${a},${b}`, ['message', 'update', a, b]);
  await waitFor(async () => (await subscribers(a)) === 1 && (await subscribers(b)) === 1, { what: 'subscribed' });
  await publish(a, 'plain on a');
  await publish(b, 'typed\r\non b', { 'Event-Type': 'update' });
  await publish(b, 'plain on b');
  await waitFor(() => c.got.length >= 3, { what: 'three events' });
  c.es.close();
  equal(c.got.map((e) => [e.type, e.data]), [[a, 'plain on a'], ['update', 'typed\non b'], [b, 'plain on b']],
    'event types');
});

test('reload ends the stream; the client reconnects with Last-Event-ID and misses nothing', async () => {
  const ch = `es-reload-${tag}`;
  const c = client(`/events/${ch}`);
  await waitFor(async () => (await subscribers(ch)) === 1, { what: 'subscribed' });
  const sent = [];
  for (let i = 1; i <= 3; i++) sent.push({ id: await publish(ch, `before ${i}\r\nline 2`), data: `before ${i}\nline 2` });
  await waitFor(() => c.got.length >= 3, { what: 'three events before the reload' });
  let stop = false;
  let n = 0;
  const publisher = (async () => {
    while (!stop) {
      n += 1;
      sent.push({ id: await publish(ch, `during ${n} ✓`), data: `during ${n} ✓` });
      await sleep(15);
    }
  })();
  await waitFor(() => n >= 3, { what: 'publishing' });
  await reloadNginx();
  await waitFor(() => c.opens() >= 2, { what: 'the client reconnected', timeout: 10000 });
  const atReopen = n;
  await waitFor(() => n >= atReopen + 5, { what: 'five more after the reconnect' });
  stop = true;
  await publisher;
  const last = sent[sent.length - 1];
  await waitFor(() => c.got.some((e) => e.id === last.id), { what: 'the last message' });
  c.es.close();
  equal(c.got.map((e) => e.data), sent.map((e) => e.data), 'every message once, in order');
  equal(c.got.map((e) => e.id), sent.map((e) => e.id), 'with the publish ids');
  equal(c.requests.length, 2, 'two requests: the first and one reconnect');
  equal(c.requests[0], null, 'the first request had no Last-Event-ID');
  const ids = c.got.map((e) => e.id);
  assert(ids.includes(c.requests[1]) && c.requests[1] !== last.id,
    `the reconnect sent Last-Event-ID ${c.requests[1]}: an id it had received, before the end`);
});

test('a Last-Event-ID the server cannot parse: 200 and new messages (EventSource would stop on an error)', async () => {
  const ch = `es-bad-${tag}`;
  await publish(ch, 'old');
  const es = new EventSource(`${base}/events/${ch}`, {
    fetch: (url, init) => fetch(url, { ...init, headers: { ...Object.fromEntries(new Headers(init.headers)), 'last-event-id': 'zz-top' } }),
  });
  const got = [];
  es.addEventListener('message', (e) => got.push(e.data));
  await waitFor(async () => (await subscribers(ch)) === 1, { what: 'subscribed' });
  await publish(ch, 'new');
  await waitFor(() => got.length >= 1, { what: 'an event' });
  es.close();
  equal(got, ['new'], 'treated as no cursor: only the new message');
});

run();
