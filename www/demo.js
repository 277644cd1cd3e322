// The demo page: one channel shown twice (EventSource and long polling), a publish form
// and a status panel fed by the module's channel_stats (proxied at /status).
import { subscribe } from './channels.js';
import { startPrivatePanel } from './demo-private.js';

const FEED_LIMIT = 200;
const STATUS_EVERY_MS = 1000;
const CHANNEL_RE = /^[A-Za-z0-9_.:@~-]{1,255}$/;

const $ = (id) => document.getElementById(id);

const state = {
  channel: 'demo',
  events: new Set(['alert', 'info', 'update', 'chat']),   // SSE event types listened for
  sse: null,
  poll: null,
  lastStats: null,        // {published, at} of the previous status answer
};

function setBadge(id, text, kind) {
  const el = $(id);
  el.textContent = text;
  el.className = `badge ${kind ?? ''}`.trim();
}

function addItem(feedId, msg) {
  const feed = $(feedId);
  const li = document.createElement('li');
  li.dataset.id = msg.id ?? '';
  li.dataset.channel = msg.channel ?? '';
  const meta = document.createElement('span');
  meta.className = 'meta';
  meta.textContent = `${new Date().toLocaleTimeString()}  id ${msg.id ?? '-'}`;
  li.append(meta);
  if (msg.event) {
    const ev = document.createElement('span');
    ev.className = 'event';
    ev.textContent = msg.event;
    li.append(ev);
  }
  const data = document.createElement('span');
  data.className = 'data';
  data.textContent = msg.encoding === 'base64' ? `[binary, base64] ${msg.data}` : msg.data;
  li.append(data);
  feed.prepend(li);
  while (feed.children.length > FEED_LIMIT) feed.lastElementChild.remove();
}

function addNote(feedId, text) {
  const li = document.createElement('li');
  li.className = 'note';
  li.textContent = text;
  $(feedId).prepend(li);
}

function subscribeFeed(feedId, stateId, transport, lastEventId, onFirstOpen) {
  const ch = state.channel;
  let first = onFirstOpen;
  const sub = subscribe({
    url: '/events/{channels}',
    pollUrl: '/poll/{channels}',
    channels: [ch],
    transport,
    lastEventId,
    events: [...state.events],
    onMessage: (m) => addItem(feedId, m),
    onOpen: ({ transport: t }) => {
      setBadge(stateId, t === 'sse' ? 'open' : 'polling', 'open');
      if (first) first();
      first = null;
    },
    onError: (err, { delay, fatal }) => {
      if (fatal) {
        setBadge(stateId, 'stopped', 'closed');
        addNote(feedId, err.message);
      } else {
        setBadge(stateId, `retry in ${(delay / 1000).toFixed(1)}s`, 'retrying');
      }
    },
    onGap: (g) => addNote(feedId, `gap: messages after ${g.last_event_id ?? 'your cursor'} were evicted`),
    onDeleted: ({ channel }) => {
      addNote(feedId, `channel ${channel ?? ch} was deleted`);
      setBadge(stateId, 'deleted', 'closed');
    },
    onTransport: ({ transport: t, reason }) => {
      if (feedId === 'sse-feed') {
        $('sse-transport').textContent = t === 'sse' ? 'EventSource' : 'long-poll (fallback)';
        document.body.dataset.sseTransport = t;
        if (t === 'longpoll') addNote(feedId, `switched to long polling: ${reason}`);
      }
    },
  });
  // A long poll answers only when a message comes (or after longpoll_timeout): show it
  // as waiting at once.
  if (sub.transport === 'longpoll') setBadge(stateId, 'polling', 'open');
  return sub;
}

function connectFeeds() {
  for (const sub of [state.sse, state.poll]) sub?.close();
  const ch = state.channel;
  $('sse-url').textContent = `/events/${ch}`;
  $('poll-url').textContent = `/poll/${ch}`;
  $('curl-hint').textContent = `curl -d 'hello' http://127.0.0.1:8081/pub/${ch}`;
  state.sse = subscribeFeed('sse-feed', 'sse-state', 'auto', null);
  state.poll = subscribeFeed('poll-feed', 'poll-state', 'longpoll', null);
}

// SSE only dispatches event types it listens for: before publishing a new type, resubscribe
// with the type added, from the current cursor (so nothing is lost), and wait until the new
// stream is open (so a subscriber that had no cursor yet does not miss the message).
function ensureEventType(type) {
  if (!type || state.events.has(type)) return Promise.resolve();
  state.events.add(type);
  if (!state.sse || state.sse.transport !== 'sse') return Promise.resolve();
  const cursor = state.sse.lastEventId;
  state.sse.close();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 3000);
    state.sse = subscribeFeed('sse-feed', 'sse-state', 'auto', cursor, () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

async function publish(event) {
  event.preventDefault();
  const text = $('message').value;
  const type = $('event-type').value.trim();
  const out = $('publish-result');
  const button = $('publish-button');
  button.disabled = true;
  try {
    await ensureEventType(type);
    const headers = { 'Content-Type': 'text/plain; charset=utf-8' };
    if (type) headers['Event-Type'] = type;
    const res = await fetch(`/publish/${encodeURIComponent(state.channel)}`, {
      method: 'POST',
      headers,
      body: text,
    });
    const body = await res.text();
    out.className = res.ok ? 'result' : 'result error';
    out.textContent = `${res.status} ${body.trim()}`;
    if (res.ok) $('message').value = '';
  } catch (err) {
    out.className = 'result error';
    out.textContent = `publish failed: ${err.message}`;
  } finally {
    button.disabled = false;
  }
}

function formatBytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`;
  return `${n} B`;
}

function showStats(zone) {
  const now = performance.now();
  $('status-subscribers').textContent = zone.subscribers;
  $('status-published').textContent = zone.published;
  $('status-delivered').textContent = zone.delivered;
  $('status-channels').textContent = zone.channels;
  $('status-messages').textContent = zone.messages;
  $('status-evicted').textContent = zone.evicted;
  if (state.lastStats) {
    const seconds = (now - state.lastStats.at) / 1000;
    const rate = seconds > 0 ? (zone.published - state.lastStats.published) / seconds : 0;
    $('status-rate').textContent = Math.max(0, rate).toFixed(1);
  }
  state.lastStats = { published: zone.published, at: now };
  $('status-zone').textContent = `${formatBytes(zone.used)} of ${formatBytes(zone.size)} (${zone.name})`;
  $('status-zone-meter').value = zone.size > 0 ? zone.used / zone.size : 0;
  const rows = (zone.workers ?? []).map((w) => {
    const tr = document.createElement('tr');
    for (const v of [w.pid, w.subscribers, w.wakeups]) {
      const td = document.createElement('td');
      td.textContent = v ?? '-';
      tr.append(td);
    }
    return tr;
  });
  $('status-workers').replaceChildren(...rows);
}

async function pollStatus() {
  try {
    const res = await fetch('/status', { cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const stats = await res.json();
    const zone = stats.zones?.[0];
    if (!zone) throw new Error('no zone in /status');
    showStats(zone);
    setBadge('status-state', 'live', 'open');
  } catch (err) {
    setBadge('status-state', `unavailable (${err.message})`, 'retrying');
  } finally {
    setTimeout(pollStatus, STATUS_EVERY_MS);
  }
}

function switchChannel(event) {
  event.preventDefault();
  const ch = $('channel').value.trim();
  if (!CHANNEL_RE.test(ch) || ch === state.channel) return;
  state.channel = ch;
  const url = new URL(location.href);
  url.searchParams.set('ch', ch);
  history.replaceState(null, '', url);
  for (const id of ['sse-feed', 'poll-feed']) $(id).replaceChildren();
  connectFeeds();
}

function start() {
  const fromUrl = new URLSearchParams(location.search).get('ch');
  if (fromUrl && CHANNEL_RE.test(fromUrl)) state.channel = fromUrl;
  $('channel').value = state.channel;
  $('channel-form').addEventListener('submit', switchChannel);
  $('publish-form').addEventListener('submit', publish);
  connectFeeds();
  pollStatus();
  startPrivatePanel();
}

start();
