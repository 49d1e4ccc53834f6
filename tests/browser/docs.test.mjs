// The API reference at /docs: rendered on the server from the OpenAPI document, readable
// without signing in, every operation expandable, no console errors, nothing overflowing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const browser = chromiumForTests();

test('the API reference lists every operation and its schemas', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()); });
  await page.goto(base + '/docs');
  assert.equal(await page.locator('h1').innerText(), 'API reference');
  await page.screenshot({ path: `${artifacts}docs-top-${backend}.png` });
  const documented = await page.evaluate(async () => {
    const doc = await (await fetch('/api/openapi.json')).json();
    return Object.values(doc.paths).reduce((n, item) => n + Object.keys(item).filter((m) => ['get', 'post', 'put', 'patch', 'delete'].includes(m)).length, 0);
  });
  assert.equal(await page.locator('details.operation').count(), documented, 'one entry per operation');
  const login = page.locator('details[data-operation="POST /api/v1/auth/login"]');
  await login.locator('summary').click();
  await login.locator('table caption:has-text("Responses")').waitFor();
  assert.match(await login.innerText(), /401/);
  await login.scrollIntoViewIfNeeded();
  await page.screenshot({ path: `${artifacts}docs-login-${backend}.png` });
  const completions = page.locator('details[data-operation="POST /v1/chat/completions"]');
  await completions.locator('summary').click();
  assert.match(await completions.innerText(), /OpenAI/);
  await page.locator('#schema-Problem summary').click();
  assert.match(await page.locator('#schema-Problem').innerText(), /status/);
  // The errors the shared layers answer are listed once, not under every operation.
  const common = page.locator('#common-errors');
  await common.locator('summary').click();
  for (const status of ['400', '401', '403', '404', '413', '415', '429', '503']) {
    assert.match(await common.innerText(), new RegExp(`\\b${status}\\b`));
  }
  assert.doesNotMatch(await login.innerText(), /^503\b/m, 'the common 503 is not repeated');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `nothing overflows sideways (${overflow}px)`);
  await page.screenshot({ path: `${artifacts}docs-${backend}.png`, fullPage: false });
  assert.deepEqual(errors, []);
  await context.close();
});
