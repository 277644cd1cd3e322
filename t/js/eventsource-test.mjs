// The module's SSE streams read by the npm `eventsource` package (a WHATWG-conformant
// EventSource for Node.js), driven by t/eventsource.t:
//   node t/js/eventsource-test.mjs PUBLIC_BASE INTERNAL_BASE
// What a browser's EventSource would see: data published with LF, CRLF and CR line ends,
// blank lines, leading spaces and colons, NUL and UTF-8 (also long, so multi-byte characters
// straddle reads) comes out exactly as the WHATWG parser defines; typed events go to their
// listeners; several channels name their events; channel-deleted; a dropped connection and a
// `nginx -s reload` (done by the Perl side on "RELOAD") are followed by a reconnect that sends
// Last-Event-ID and misses nothing; a malformed Last-Event-ID is not an error.
import { setTimeout as sleep } from 'node:timers/promises';
import { EventSource } from 'eventsource';
import { test, run, assert, equal, waitFor } from './runner.mjs';
import { reloadNginx, fetchAgain } from './reload-peer.mjs';

const [base, internal] = process.argv.slice(2);
if (!base || !internal) {
  console.error('usage: node eventsource-test.mjs PUBLIC_BASE INTERNAL_BASE');
  process.exit(2);
}

const unique = () => Math.random().toString(36).slice(2, 10);

async function publish(channel, data, headers = {}) {
  const res = await fetchAgain(`${internal}/pub/${channel}`, { method: 'POST', body: data, headers });
  assert(res.status === 201, `publish to ${channel}: HTTP ${res.status}`);
  return (await res.json()).id;
}

async function subscribers(channel) {
  const res = await fetchAgain(`${internal}/pub/${channel}`);
  return res.status === 200 ? (await res.json()).subscribers : 0;
}

// An EventSource that records what it dispatches for the given event names, each request's
// Last-Event-ID header, its opens and its errors. `fetch` replaces the one it goes through.
function client(path, { names = ['message'], fetch: inner = fetch } = {}) {
  const requests = [];
  const recording = (url, init) => {
    requests.push(new Headers(init.headers).get('last-event-id'));
    return inner(url, init);
  };
  const c = { es: new EventSource(`${base}${path}`, { fetch: recording }), got: [], requests, opens: 0, errors: [] };
  for (const name of names) {
    c.es.addEventListener(name, (e) => c.got.push({ type: e.type, data: e.data, id: e.lastEventId }));
  }
  c.es.addEventListener('open', () => { c.opens += 1; });
  c.es.addEventListener('error', (e) => c.errors.push(e.message ?? 'error'));
  return c;
}

// A client whose stream is open and counted by the channel.
async function subscribed(path, channel, options) {
  const c = client(path, options);
  await waitFor(() => c.es.readyState === EventSource.OPEN, { what: `${path} open` });
  await waitFor(async () => (await subscribers(channel)) === 1, { what: `${channel} subscribed` });
  return c;
}

// What the WHATWG parser makes of data published as-is: every CRLF, CR and LF is a line
// end, and the lines are joined with LF.
const whatwg = (s) => s.replace(/\r\n|\r|\n/g, '\n');

// Every payload, published as-is or (UTF8) with Content-Type: text/plain; charset=utf-8.
const UTF8 = { 'Content-Type': 'text/plain; charset=utf-8' };
const PAYLOADS = [
  ['plain', 'plain'],
  ['two lines', 'two\nlines'],
  ['a CRLF', 'crlf\r\nline'],
  ['a lone CR', 'lone\rcr'],
  ['blank lines inside', 'blank\r\n\r\nlines\n\ninside\r\rtoo'],
  ['one leading space', ' leading space'],
  ['two leading spaces', '  two leading spaces'],
  ['LF at the end', 'trailing newline\n'],
  ['CR at the end', 'trailing cr\r'],
  ['only LF', '\n'],
  ['empty', ''],
  ['lines looking like fields', 'looks like fields:\nid: 1\nevent: x\ndata: y\nretry: 5\n: comment'],
  ['Unicode', 'unicode: héllo wörld ✓ 😀 中文 עברית'],
  ['long', `long ${'x'.repeat(70000)} end`],
  ['LF lines', 'first\nsecond\nthird', UTF8],
  ['CRLF lines', 'first\r\nsecond\r\nthird', UTF8],
  ['CR lines', 'first\rsecond\rthird', UTF8],
  ['mixed, with blank lines', 'a\r\n\r\nb\n\nc\r\rd\n\r\ne', UTF8],
  ['CRLF at the end', 'ends with crlf\r\n', UTF8],
  ['CR at the end (UTF8)', 'ends with cr\r', UTF8],
  ['only CRLF', '\r\n', UTF8],
  ['empty (UTF8)', '', UTF8],
  ['leading spaces on every line', '  two spaces\n one space\nnone', UTF8],
  ['lines looking like fields and comments', ': comment?\ndata: nested\nid: 99\nevent: x\nretry: 10', UTF8],
  ['NUL', 'nul\u0000inside', UTF8],
  ['UTF-8', 'héllo wörld ✓ 😀 中文 עברית Ω ẞ', UTF8],
  ['BOM inside', '\uFEFFbom at the start of the data', UTF8],
  ['long UTF-8', `${'é😀中'.repeat(20000)} end`, UTF8],
];

test('data comes out exactly as the WHATWG parser defines (LF, CRLF, CR, empty, spaces, NUL, UTF-8)', async () => {
  const ch = `whatwg-${unique()}`;
  const c = await subscribed(`/events/${ch}`, ch);
  const ids = [];
  for (const [, p, headers] of PAYLOADS) ids.push(await publish(ch, p, headers));
  await waitFor(() => c.got.length >= PAYLOADS.length, { what: `${PAYLOADS.length} events (got ${c.got.length})` });
  c.es.close();
  PAYLOADS.forEach(([label, p], i) => {
    equal(c.got[i].data, whatwg(p), label);
    equal(c.got[i].id, ids[i], `${label}: lastEventId is the publish id`);
    equal(c.got[i].type, 'message', `${label}: a message event`);
  });
  equal(c.got.length, PAYLOADS.length, 'no extra events');
  equal(c.errors, [], 'no errors');
});

test('event types: a typed message goes to its listener, not to onmessage', async () => {
  const ch = `typed-${unique()}`;
  const c = await subscribed(`/events/${ch}`, ch, { names: ['message', 'price', 'news.flash'] });
  await publish(ch, '101.5', { 'Event-Type': 'price' });
  await publish(ch, 'untyped');
  await fetchAgain(`${internal}/pub/${ch}?event=news.flash`, { method: 'POST', body: 'breaking' });
  await waitFor(() => c.got.length >= 3, { what: 'three events' });
  c.es.close();
  equal(c.got.map((e) => [e.type, e.data]), [['price', '101.5'], ['message', 'untyped'], ['news.flash', 'breaking']],
    'types and data');
});

test('several channels: untyped events are named after their channel, typed ones keep their type', async () => {
  const tag = unique();
  const [a, b] = [`ma-${tag}`, `mb-${tag}`];
  const c = client(`/events/${a},${b}`, { names: ['message', 'update', a, b] });
  await waitFor(async () => (await subscribers(a)) === 1 && (await subscribers(b)) === 1, { what: 'subscribed' });
  await publish(a, 'to a');
  await publish(b, 'to b\r\nsecond');
  await publish(b, 'typed\r\non b', { 'Event-Type': 'update' });
  await publish(b, 'plain on b');
  await waitFor(() => c.got.length >= 4, { what: 'four events' });
  c.es.close();
  equal(c.got.map((e) => [e.type, e.data]),
    [[a, 'to a'], [b, 'to b\nsecond'], ['update', 'typed\non b'], [b, 'plain on b']], 'event names and data');
});

test('channel-deleted arrives as its own event with JSON data', async () => {
  const ch = `gone-${unique()}`;
  const c = await subscribed(`/events/${ch}`, ch, { names: ['message', 'channel-deleted'] });
  await publish(ch, 'last words');
  const res = await fetchAgain(`${internal}/pub/${ch}`, { method: 'DELETE' });
  equal(res.status, 200, 'DELETE');
  await waitFor(() => c.got.length >= 2, { what: 'message and channel-deleted' });
  c.es.close();
  equal(c.got[0].data, 'last words', 'the message first');
  equal(c.got[1].type, 'channel-deleted', 'then channel-deleted');
  equal(JSON.parse(c.got[1].data), { channel: ch }, 'its data names the channel');
});

// Runs before the dropped-connection test: after that one, the reconnect during the reload was
// seen reaching an old worker, whose answer ended at once (200, the chunked terminator only), so
// the client came back a second time.
test('reload ends the stream; the client reconnects with Last-Event-ID and misses nothing', async () => {
  const ch = `reload-${unique()}`;
  const c = await subscribed(`/events/${ch}`, ch);
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
  await waitFor(() => c.opens >= 2, { what: 'the client reconnected', timeout: 10000 });
  const atReopen = n;
  await waitFor(() => n >= atReopen + 5, { what: 'five more after the reconnect' });
  stop = true;
  await publisher;
  const last = sent[sent.length - 1];
  await waitFor(() => c.got.some((e) => e.id === last.id), { what: 'the last message' });
  c.es.close();
  equal(c.got.map((e) => e.data), sent.map((e) => e.data), 'every message once, in order');
  equal(c.got.map((e) => e.id), sent.map((e) => e.id), 'with the publish ids');
  equal(c.requests, [null, c.requests[1]], 'two requests: the first (no Last-Event-ID) and one reconnect');
  equal(c.requests[0], null, 'the first request had no Last-Event-ID');
  const ids = c.got.map((e) => e.id);
  assert(ids.includes(c.requests[1]) && c.requests[1] !== last.id,
    `the reconnect sent Last-Event-ID ${c.requests[1]}: an id it had received, before the end`);
});

test('a dropped connection: the client reconnects with Last-Event-ID and the stream resumes after it', async () => {
  const ch = `reconnect-${unique()}`;
  let responses = 0;
  let cut = false;
  // Ends the first response after its first event, as a dropped connection would (the
  // server side stays as it is).
  const cuttingFetch = async (url, init) => {
    const controller = new AbortController();
    init.signal?.addEventListener('abort', () => controller.abort());
    const res = await fetch(url, { ...init, signal: controller.signal });
    if (++responses > 1) return res;
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
  const c = await subscribed(`/events/${ch}`, ch, { fetch: cuttingFetch });
  const m1 = await publish(ch, 'm1');
  await waitFor(() => c.got.length >= 1 && cut, { what: 'm1, then the cut' });
  const m2 = await publish(ch, 'm2');      // while the client waits to reconnect
  await waitFor(() => c.got.length >= 2, { what: 'm2 after the reconnect', timeout: 15000 });
  const m3 = await publish(ch, 'm3');
  await waitFor(() => c.got.length >= 3, { what: 'm3 live' });
  c.es.close();
  equal(c.requests, [null, m1], 'first request without Last-Event-ID, the reconnect with m1');
  equal(c.got.map((e) => [e.data, e.id]), [['m1', m1], ['m2', m2], ['m3', m3]], 'each message once, in order');
});

test('a malformed Last-Event-ID is ignored, not an error (EventSource would stop)', async () => {
  const res = await fetch(`${base}/events/badcursor-${unique()}`, { headers: { 'Last-Event-ID': 'not-an-id' } });
  equal(res.status, 200, 'status');
  assert(/^text\/event-stream/.test(res.headers.get('content-type')), 'content type');
  await res.body.cancel();
  const ch = `badcursor-${unique()}`;
  await publish(ch, 'old');
  const c = client(`/events/${ch}`, {
    fetch: (url, init) => fetch(url, { ...init, headers: { ...Object.fromEntries(new Headers(init.headers)), 'last-event-id': 'zz-top' } }),
  });
  await waitFor(async () => (await subscribers(ch)) === 1, { what: 'subscribed' });
  await publish(ch, 'new');
  await waitFor(() => c.got.length >= 1, { what: 'an event' });
  c.es.close();
  equal(c.got.map((e) => e.data), ['new'], 'treated as no cursor: only the new message');
});

run();
