// channels.js: a small, dependency-free client for nginx-channels.
//
//   import { subscribe } from './channels.js';
//   const sub = subscribe({
//     url: '/events/{channels}',        // sse_channel location ({channels} = comma-joined ids)
//     pollUrl: '/poll/{channels}',      // longpoll_channel location (format=json), for the fallback
//     channels: ['news', 'sports'],
//     onMessage(m) { console.log(m.channel, m.id, m.event, m.data); },
//   });
//   sub.close();
//
// Transport: EventSource when the browser has it, long polling when it does not or when
// EventSource keeps failing. Reconnects use exponential backoff with jitter and resume from
// the last message id seen, also across a switch from one transport to the other.
// Ids are treated as opaque strings.
//
// Token-protected channels (channel_auth jwt): give `token`, a function returning a fresh
// token (or a promise of one). It is called before the first connection and again before
// reconnecting after the server's `token-expired` event or a refusal (a 401 answer to a
// long poll; an event stream that failed to open, since EventSource hides the status).
// A string is sent as ?access_token= on event streams (EventSource cannot set headers) and
// as `Authorization: Bearer` on long polls. Return null to rely on a cookie instead (the
// function may first have the application renew it):
//   token: async () => (await fetch('/api/channel-token')).text(),
//   token: async () => { await fetch('/api/renew-cookie', { method: 'POST' }); return null; },

const DEFAULTS = {
  transport: 'auto',            // 'auto' | 'sse' | 'longpoll'
  lastEventId: null,            // cursor to start from (null: the location's channel_first_message)
  events: [],                   // custom SSE event types (set by publishers) to listen for
  minDelay: 500,                // backoff: first retry after about this many ms ...
  maxDelay: 30000,              // ... doubling up to this
  sseFailures: 3,               // 'auto': SSE connections in a row that fail before opening -> long poll
  pollTimeout: 90000,           // abort a long-poll request that hangs longer than this (ms)
  withCredentials: false,       // send cookies cross-origin (CORS with credentials)
  token: null,                  // ({reason}) => token | null | Promise: see above
};

// Event names the module itself sends on SSE streams.
const GAP_EVENT = 'channel-gap';
const DELETED_EVENT = 'channel-deleted';
const EXPIRED_EVENT = 'token-expired';

function noop() {}

function toList(channels) {
  const list = Array.isArray(channels) ? channels : String(channels ?? '').split(',');
  const seen = new Set();
  for (const c of list) {
    const id = String(c).trim();
    if (id !== '') seen.add(id);
  }
  return [...seen];
}

// Builds a request URL: {channels} is replaced by the comma-joined ids, extra query
// arguments are appended.
function buildUrl(template, channels, args) {
  const joined = channels.map(encodeURIComponent).join(',');
  let url = String(template).split('{channels}').join(joined);
  const query = Object.entries(args)
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join('&');
  if (query !== '') url += (url.includes('?') ? '&' : '?') + query;
  return url;
}

// Exponential backoff with "equal jitter": a delay between half and all of the cap.
function backoffDelay(attempt, min, max) {
  const cap = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return cap / 2 + Math.random() * (cap / 2);
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/**
 * Subscribes to one or more channels. Returns { close(), transport, lastEventId, channels }.
 *
 * Callbacks (all optional except onMessage):
 *   onMessage({id, channel, event, data, contentType, encoding, transport})
 *     channel is null for an SSE message with a custom event type on a multi-channel stream
 *     (the SSE wire format does not carry the channel then); event is null without a type.
 *   onOpen({transport})            a connection (SSE stream or first poll answer) is up
 *   onError(error, {transport, attempt, delay, fatal})   a connection failed; retry in delay ms,
 *                                  or fatal (a 4xx from the long-poll endpoint): no more retries
 *   onGap({channel, last_event_id, oldest_event_id, transport})  messages after the cursor were
 *                                  evicted or expired before they could be delivered
 *   onDeleted({channel, transport}) a channel was deleted by a publisher; it is dropped from
 *                                  the subscription, which closes when no channel is left
 *   onTransport({transport, reason})  the transport was chosen or switched
 *   onToken({reason})              a token was fetched with options.token (reason: 'start',
 *                                  'token-expired', 'unauthorized' or 'stream-failed')
 */
export function subscribe(options) {
  const opts = { ...DEFAULTS, ...options };
  if (!opts.url && !opts.pollUrl) throw new TypeError('channels.js: url or pollUrl is required');
  const onMessage = opts.onMessage ?? noop;
  const onOpen = opts.onOpen ?? noop;
  const onError = opts.onError ?? noop;
  const onGap = opts.onGap ?? noop;
  const onDeleted = opts.onDeleted ?? noop;
  const onTransport = opts.onTransport ?? noop;
  const onToken = opts.onToken ?? noop;
  const ES = opts.EventSource !== undefined ? opts.EventSource : globalThis.EventSource;
  const doFetch = opts.fetch ?? globalThis.fetch?.bind(globalThis);

  let channels = toList(opts.channels);
  if (channels.length === 0 && String(opts.url ?? opts.pollUrl).includes('{channels}')) {
    throw new TypeError('channels.js: no channel given');
  }
  let cursor = opts.lastEventId ?? null;
  let closed = false;
  let transport = null;
  let attempt = 0;               // consecutive failures, for the backoff
  let sseFailures = 0;           // SSE connections in a row that failed before opening
  let timer = null;
  let source = null;             // current EventSource
  let abort = null;              // AbortController of the current poll
  let pollOpened = false;        // onOpen sent for the current run of successful polls
  let token = null;              // the token from options.token (null: none, or a cookie)
  let tokenReason = opts.token ? 'start' : null;   // set: fetch a token before connecting
  let refusals = 0;              // 401s in a row: the first retries at once with a new token

  function setTransport(next, reason) {
    if (transport === next) return;
    transport = next;
    onTransport({ transport, reason });
  }

  function retryLater(error, fatal = false) {
    pollOpened = false;
    const delay = fatal ? null : backoffDelay(attempt, opts.minDelay, opts.maxDelay);
    onError(error, { transport, attempt, delay, fatal });
    attempt += 1;
    if (fatal) {
      close();
      return;
    }
    timer = setTimeout(() => {
      timer = null;
      connect();
    }, delay);
  }

  function deliver(msg) {
    if (msg.id) {
      if (msg.id === cursor) return;   // already delivered (e.g. replayed at a reconnect)
      cursor = msg.id;
    }
    onMessage({ ...msg, transport });
  }

  function dropChannel(channel) {
    channels = channels.filter((c) => c !== channel);
    onDeleted({ channel, transport });
    if (channels.length === 0) close();
  }

  // ---- EventSource ----

  function connectSse() {
    const url = buildUrl(opts.url, channels, { last_event_id: cursor, access_token: token });
    const es = new ES(url, { withCredentials: opts.withCredentials });
    source = es;
    let opened = false;
    const single = channels.length === 1 ? channels[0] : null;

    const onEvent = (channel, event) => (e) => {
      if (source !== es) return;
      attempt = 0;
      deliver({
        id: e.lastEventId || null,
        channel,
        event,
        data: e.data,
        contentType: null,
        encoding: null,
      });
    };

    es.addEventListener('open', () => {
      if (source !== es) return;
      opened = true;
      attempt = 0;
      sseFailures = 0;
      onOpen({ transport });
    });
    es.addEventListener('message', onEvent(single, null));
    if (single === null) {
      for (const ch of channels) es.addEventListener(ch, onEvent(ch, null));
    }
    for (const ev of opts.events) {
      if (ev !== 'message' && !channels.includes(ev)) es.addEventListener(ev, onEvent(single, ev));
    }
    es.addEventListener(GAP_EVENT, (e) => {
      if (source !== es) return;
      const info = parseJson(e.data) ?? {};
      onGap({ ...info, transport });
    });
    es.addEventListener(DELETED_EVENT, (e) => {
      if (source !== es) return;
      if (e.lastEventId) cursor = e.lastEventId;
      const info = parseJson(e.data) ?? {};
      dropChannel(info.channel ?? single);
    });
    es.addEventListener(EXPIRED_EVENT, () => {
      if (source !== es) return;
      // The stream ends here: reconnect at once (no backoff) with a fresh token.
      es.close();
      source = null;
      tokenReason = EXPIRED_EVENT;
      connect();
    });
    es.addEventListener('error', () => {
      if (source !== es) return;
      // Take reconnecting over from EventSource: our own backoff, and the URL carries the
      // current cursor and channel list (EventSource would reuse the first URL).
      es.close();
      source = null;
      if (closed) return;
      if (!opened) sseFailures += 1;
      if (!opened && opts.token) tokenReason = 'stream-failed';   // perhaps a 401
      if (opts.transport === 'auto' && opts.pollUrl && sseFailures >= opts.sseFailures) {
        setTransport('longpoll', `EventSource failed ${sseFailures} times in a row`);
        attempt = 0;
        connect();
        return;
      }
      retryLater(new Error(opened ? 'event stream ended' : 'event stream failed to open'));
    });
  }

  // ---- long polling ----

  async function pollOnce() {
    const controller = new AbortController();
    abort = controller;
    const hang = setTimeout(() => controller.abort(), opts.pollTimeout);
    let res;
    try {
      const headers = { Accept: 'application/json' };
      if (token) headers.Authorization = `Bearer ${token}`;
      res = await doFetch(buildUrl(opts.pollUrl, channels, { last_event_id: cursor }), {
        headers,
        cache: 'no-store',
        credentials: opts.withCredentials ? 'include' : 'same-origin',
        signal: controller.signal,
      });
      const header = res.headers.get('Last-Event-ID');
      if (res.status === 401 && opts.token) {
        // Expired (a long poll ends at the token's exp) or refused: a new token, at once
        // the first time, after the usual backoff when that one is refused too.
        await res.body?.cancel();
        tokenReason = 'unauthorized';
        refusals += 1;
        if (refusals > 1) throw new Error('long poll: HTTP 401 with a fresh token');
        timer = setTimeout(() => {
          timer = null;
          connect();
        }, 0);
        return;
      }
      refusals = 0;
      if (res.status === 200) {
        const body = await res.json();
        if (closed || abort !== controller) return;
        if (body.gap) onGap({ channel: null, last_event_id: cursor, oldest_event_id: null, transport });
        for (const m of body.messages ?? []) {
          if (closed) return;
          deliver({
            id: m.id,
            channel: m.channel ?? null,
            event: m.event ?? null,
            data: m.data,
            contentType: m.content_type ?? null,
            encoding: m.encoding ?? null,
          });
        }
        if (body.last_event_id) cursor = body.last_event_id;
      } else if (res.status === 204) {
        if (header) cursor = header;
      } else if (res.status === 410) {
        if (closed) return;
        // The answer does not say which channel; with one channel it is that one.
        for (const ch of [...channels]) {
          if (closed) break;
          dropChannel(ch);
        }
        return;
      } else {
        const text = (await res.text()).trim();
        const fatal = res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429;
        throw Object.assign(new Error(`long poll: HTTP ${res.status}${text ? `: ${text}` : ''}`), { status: res.status, fatal });
      }
    } finally {
      clearTimeout(hang);
    }
    if (closed || abort !== controller) return;
    if (!pollOpened) {
      pollOpened = true;
      onOpen({ transport });
    }
    attempt = 0;
    timer = setTimeout(() => {
      timer = null;
      connect();
    }, 0);
  }

  function connectPoll() {
    pollOnce().catch((error) => {
      if (closed) return;
      retryLater(error, Boolean(error.fatal));
    });
  }

  function connectNow() {
    if (closed) return;
    if (transport === 'sse') connectSse();
    else connectPoll();
  }

  // Fetches a token first when one is due (start, token-expired, a refusal).
  function connect() {
    if (closed) return;
    if (!tokenReason) {
      connectNow();
      return;
    }
    const reason = tokenReason;
    tokenReason = null;
    Promise.resolve()
      .then(() => opts.token({ reason }))
      .then((fresh) => {
        if (closed) return;
        token = fresh || null;
        onToken({ reason });
        connectNow();
      })
      .catch((error) => {
        if (closed) return;
        tokenReason = reason;
        retryLater(error instanceof Error ? error : new Error(String(error)));
      });
  }

  function close() {
    if (closed) return;
    closed = true;
    if (timer !== null) clearTimeout(timer);
    timer = null;
    if (source) source.close();
    source = null;
    if (abort) abort.abort();
    abort = null;
  }

  const wantSse = opts.transport !== 'longpoll' && opts.url;
  if (wantSse && typeof ES === 'function') {
    setTransport('sse', 'EventSource available');
  } else if (opts.pollUrl && typeof doFetch === 'function') {
    setTransport('longpoll', wantSse ? 'EventSource missing' : 'long polling requested');
  } else {
    throw new TypeError('channels.js: neither EventSource (with url) nor fetch (with pollUrl) is usable');
  }
  connect();

  return {
    close,
    get transport() { return transport; },
    get lastEventId() { return cursor; },
    get channels() { return [...channels]; },
    get closed() { return closed; },
  };
}
