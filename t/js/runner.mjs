// A tiny sequential test runner for the node scripts under t/js/. Output, one line each,
// read by the Perl wrappers in t/ (t/browser.t, t/browser-channels.t, t/eventsource.t):
//   PASS <name>
//   FAIL <name>: <reason>
//   SKIP <reason>              (the whole script: e.g. Chromium cannot start)
// The exit status is 1 if anything failed.
import { setTimeout as sleep } from 'node:timers/promises';

const tests = [];
let failed = 0;

export function test(name, fn, { timeout = 30000 } = {}) {
  tests.push({ name, fn, timeout });
}

export function skipAll(reason) {
  console.log(`SKIP ${String(reason).replace(/\s+/g, ' ')}`);
  process.exit(0);
}

export class AssertionError extends Error {}

export function assert(cond, message) {
  if (!cond) throw new AssertionError(message);
}

export function equal(got, want, message) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new AssertionError(`${message}: got ${g}, want ${w}`);
}

// Polls cond() until it returns a truthy value (returned) or the deadline passes (throws).
export async function waitFor(cond, { timeout = 10000, interval = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() >= deadline) {
      throw new AssertionError(`timed out waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(interval);
  }
}

export async function run({ before, after } = {}) {
  let ctx;
  try {
    ctx = before ? await before() : undefined;
  } catch (err) {
    console.log(`FAIL setup: ${oneLine(err)}`);
    process.exit(1);
  }
  for (const t of tests) {
    let timer;
    try {
      await Promise.race([
        t.fn(ctx),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new AssertionError(`timed out after ${t.timeout} ms`)), t.timeout);
        }),
      ]);
      console.log(`PASS ${t.name}`);
    } catch (err) {
      failed += 1;
      console.log(`FAIL ${t.name}: ${oneLine(err)}`);
    } finally {
      clearTimeout(timer);
    }
  }
  try {
    if (after) await after(ctx);
  } catch (err) {
    failed += 1;
    console.log(`FAIL teardown: ${oneLine(err)}`);
  }
  process.exit(failed ? 1 : 0);
}

function oneLine(err) {
  let text = err instanceof AssertionError ? err.message : (err && err.stack) || String(err);
  // fetch() failures say why only in their cause (ECONNREFUSED, UND_ERR_SOCKET, ...).
  if (err?.cause) text += ` | cause: ${err.cause.code ?? ''} ${err.cause.message ?? err.cause}`;
  return text.replace(/\s*\n\s*/g, ' | ');
}
