// What every Chromium test file shares: where the server is, where screenshots go, and one
// headless Chromium per file (started before its tests, closed after them).
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

export const base = process.env.CONCLAVE_URL;
export const backend = process.env.CONCLAVE_BACKEND ?? 'sqlite';
export const artifacts = new URL('./artifacts/', import.meta.url).pathname;

/// Chromium for this test file: `newContext` and `newPage` reach the browser started before
/// the file's tests run.
export function chromiumForTests() {
  let browser;
  before(async () => {
    assert.ok(base, 'CONCLAVE_URL must point at a running server');
    mkdirSync(artifacts, { recursive: true });
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      // Without the background-networking flags Chromium keeps calling out of this closed network.
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
  });
  after(async () => {
    await browser?.close();
  });
  return {
    newContext: (options) => browser.newContext(options),
    newPage: (options) => browser.newPage(options),
  };
}
