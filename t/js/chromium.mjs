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
