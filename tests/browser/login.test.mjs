// Signing in and out in a real Chromium, as a person would. The user was created by
// scripts/browser-test.sh with `conclave user create`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const email = process.env.CONCLAVE_TEST_EMAIL;
const password = process.env.CONCLAVE_TEST_PASSWORD;
const browser = chromiumForTests();

async function fresh() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (msg) => { if (msg.type() === 'error') problems.push(msg.text()); });
  page.on('pageerror', (err) => problems.push(err.message));
  return { context, page, problems };
}

test('a person signs in from the start page, sees their name, and signs out', async () => {
  const { context, page, problems } = await fresh();
  await page.goto(base + '/');
  await page.getByRole('link', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/login');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');
  assert.match(await page.locator('.signed-in').innerText(), /Signed in as Ada Lovelace/);
  await page.screenshot({ path: `${artifacts}signed-in-${backend}.png` });

  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === 'conclave_session');
  assert.ok(session, 'session cookie set');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Lax');
  assert.equal(await page.evaluate(() => document.cookie.includes('conclave_session')), false,
    'scripts cannot read the session cookie');

  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForURL(base + '/');
  assert.equal(await page.getByRole('link', { name: 'Sign in' }).count(), 1);
  assert.deepEqual(problems, []);
  await context.close();
});

test('a wrong password shows why, keeps the email, and signing in then works', async () => {
  const { context, page } = await fresh();
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill('not the password at all');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForSelector('.form-error');
  assert.equal(await page.locator('.form-error').innerText(), 'Email or password is incorrect.');
  assert.equal(await page.getByLabel('Email').inputValue(), email);
  await page.screenshot({ path: `${artifacts}login-error-${backend}.png` });
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');
  await context.close();
});

test('a page that needs a session sends the browser to sign in and then back', async () => {
  const { context, page } = await fresh();
  await page.goto(base + '/api/v1/me');
  await page.waitForURL(/\/login\?next=/);
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/api/v1/me');
  const me = JSON.parse(await page.locator('body').innerText());
  assert.equal(me.email, email);
  assert.equal(me.memberships[0].role, 'owner');
  await context.close();
});

test('the security page shows where I am signed in and can sign out other devices', async () => {
  const first = await fresh();
  const second = await fresh();
  for (const { page } of [first, second]) {
    await page.goto(base + '/login');
    await page.getByLabel('Email').fill(email);
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForURL(base + '/');
  }
  const { page } = first;
  await page.getByRole('link', { name: 'Security' }).click();
  await page.waitForURL(base + '/settings/security');
  assert.equal(await page.locator('.session.current').count(), 1);
  assert.ok(await page.locator('.session').count() >= 2);
  await page.screenshot({ path: `${artifacts}security-${backend}.png`, fullPage: true });
  await page.getByRole('button', { name: 'Sign out everywhere else' }).click();
  await page.waitForURL(base + '/settings/security');
  assert.equal(await page.locator('.session').count(), 1);
  // The other browser has been signed out.
  await second.page.goto(base + '/');
  assert.equal(await second.page.getByRole('link', { name: 'Sign in' }).count(), 1);
  await first.context.close();
  await second.context.close();
});
