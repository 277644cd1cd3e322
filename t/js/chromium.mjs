// Starts Debian's Chromium headless through playwright-core, or skips the calling script
// (with the reason) when Chromium is missing or cannot start on this machine.
import { existsSync } from 'node:fs';
import { skipAll } from './runner.mjs';

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export async function launchChromium() {
  if (!existsSync(CHROMIUM)) {
    skipAll(`Chromium not found at ${CHROMIUM} (Debian package chromium; tools/install-deps.sh installs it)`);
  }
  const { chromium } = await import('playwright-core');
  try {
    // launch() gives every browser a fresh temporary user data dir.
    return await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 60000 });
  } catch (err) {
    skipAll(`Chromium at ${CHROMIUM} cannot start: ${err.message}`);
  }
  return null;
}

// Collects what a page reports as broken: uncaught exceptions and console errors.
export function watchPage(page, problems) {
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console error: ${msg.text()}`);
  });
}

// A page whose HTML is served at `url` by the browser itself (a route in a fresh context, nothing
// on disk): the functions in `expose` are callable from it; resolves once the page sets
// window.ready; page.errors collects its uncaught exceptions.
export async function routedPage(browser, url, html, { expose = {} } = {}) {
  const context = await browser.newContext();
  await context.route(url, (route) => route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: html }));
  for (const [name, fn] of Object.entries(expose)) await context.exposeFunction(name, fn);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(err.message));
  await page.goto(url);
  await page.waitForFunction(() => window.ready === true);
  page.errors = errors;
  return page;
}
