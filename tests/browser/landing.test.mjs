// Opens Conclave's pages in a real Chromium and checks what a visitor sees. Started by
// scripts/browser-test.sh, which sets CONCLAVE_URL to a freshly started server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const browser = chromiumForTests();

/** Opens a page and records console errors (CSP violations show up there) and page errors. */
async function open(path, viewport = { width: 1280, height: 800 }) {
  const page = await browser.newPage({ viewport });
  const problems = [];
  page.on('console', (msg) => { if (msg.type() === 'error') problems.push(msg.text()); });
  page.on('pageerror', (err) => problems.push(err.message));
  const response = await page.goto(base + path);
  return { page, response, problems };
}

test('the landing page shows what Conclave is, styled, with no console errors', async () => {
  const { page, response, problems } = await open('/');
  assert.equal(response.status(), 200);
  assert.match(await page.title(), /Conclave/);
  const heading = await page.locator('h1').innerText();
  assert.match(heading, /Secure rooms for people, AI assistants and devices/);
  assert.equal(await page.locator('.features .card').count(), 3);
  // The stylesheet loaded under the strict CSP: the cards have the designed rounded corners.
  const radius = await page.locator('.card').first().evaluate((el) => getComputedStyle(el).borderTopLeftRadius);
  assert.equal(radius, '12px');
  // The favicon image in the header rendered.
  const logoWidth = await page.locator('.brand img').evaluate((img) => img.naturalWidth);
  assert.ok(logoWidth > 0, 'logo should load');
  const csp = response.headers()['content-security-policy'];
  assert.match(csp, /frame-ancestors 'none'/);
  assert.deepEqual(problems, []);
  await page.screenshot({ path: `${artifacts}landing-${backend}.png`, fullPage: true });
  await page.close();
});

test('the landing page works on a phone-sized screen', async () => {
  const { page, problems } = await open('/', { width: 390, height: 844 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page scrolls sideways by ${overflow}px`);
  assert.deepEqual(problems.filter((p) => !p.includes('404')), []);
  await page.screenshot({ path: `${artifacts}landing-mobile-${backend}.png`, fullPage: true });
  await page.close();
});

test('an unknown address shows a friendly 404 page with a way back', async () => {
  const { page, response } = await open('/no/such/page');
  assert.equal(response.status(), 404);
  assert.match(await page.locator('h1').innerText(), /Not Found/);
  assert.match(await page.locator('.error-page').innerText(), /There is nothing at \/no\/such\/page/);
  await page.locator('a.button').click();
  await page.waitForURL(base + '/');
  assert.match(await page.locator('h1').innerText(), /Secure rooms/);
  await page.close();
});

test('an uncaught JavaScript error in the page is reported to the server', async () => {
  const { page } = await open('/');
  const reported = page.waitForRequest((r) => r.url().endsWith('/api/v1/client-errors') && r.method() === 'POST');
  const answered = page.waitForResponse((r) => r.url().endsWith('/api/v1/client-errors'));
  await page.evaluate(() => setTimeout(() => { throw new Error('boom from the browser test'); }, 0));
  const body = JSON.parse((await reported).postData());
  assert.match(body.message, /boom from the browser test/);
  assert.equal(body.page, '/');
  assert.equal((await answered).status(), 204);
  await page.close();
});
