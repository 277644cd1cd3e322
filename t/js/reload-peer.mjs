// What the node scripts driven by NodeRunner::run_node_with_reloads share: the RELOAD
// protocol (print "RELOAD", read the Perl side's "RELOADED ok|failed" answer from stdin),
// and fetch() that survives the keep-alive connections a reload closes.
import { createInterface } from 'node:readline';

const lines = createInterface({ input: process.stdin });
const waiting = [];
const queued = [];
lines.on('line', (l) => (waiting.length ? waiting.shift()(l) : queued.push(l)));
const nextLine = () => (queued.length ? Promise.resolve(queued.shift()) : new Promise((r) => waiting.push(r)));

// Asks for `nginx -s reload` and returns once it is done; throws if it failed.
export async function reloadNginx() {
  console.log('RELOAD');
  const answer = await nextLine();
  if (!/^RELOADED ok/.test(answer)) throw new Error(`the reload failed: ${answer}`);
}

// A reload makes the old workers close idle keep-alive connections; a pooled one may be
// closed just as it is reused ("other side closed": nginx closes an idle keep-alive
// connection without reading what arrived on it, so nothing was processed). The pool may
// hold several such connections: retry on each, a few times.
const RETRIES = 5;

export async function fetchAgain(url, init) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fetch(url, init);
    } catch (err) {
      const code = err?.cause?.code;
      if (attempt > RETRIES || (code !== 'UND_ERR_SOCKET' && code !== 'ECONNRESET')) throw err;
      console.log(`NOTE ${init?.method ?? 'GET'} ${url} retried: ${code} ${err.cause.message}`);
    }
  }
}
