// Upgrading in a real Chromium with the development fake provider: the billing page shows the
// plan and usage, "Upgrade" goes to the (clearly labelled) fake checkout, a cancelled payment
// changes nothing and says so, a completed one switches the plan and leaves a receipt.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const browser = chromiumForTests();

test('billing: cancel, then upgrade with the fake provider, and read the receipt', async () => {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(process.env.CONCLAVE_BILLING_EMAIL);
  await page.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');

  await page.getByRole('link', { name: 'Usage' }).click();
  await page.waitForSelector('h2:has-text("Plan: Free")');
  await page.waitForSelector('text=payments go to a fake provider');
  await page.screenshot({ path: `${artifacts}billing-${backend}.png`, fullPage: true });

  // Cancelled: nothing changes, and the page says so.
  await page.getByRole('button', { name: 'Upgrade to Pro' }).click();
  await page.waitForSelector('text=Fake payment provider');
  await page.getByRole('button', { name: 'Cancel payment' }).click();
  await page.waitForSelector('text=The payment was cancelled');
  await page.goto(base + '/billing');
  await page.waitForSelector('h2:has-text("Plan: Free")');

  // Completed: the plan switches, with a receipt.
  await page.getByRole('button', { name: 'Upgrade to Pro' }).click();
  await page.waitForSelector('h1:has-text("Pay €15.00")');
  await page.getByRole('button', { name: 'Complete payment' }).click();
  await page.waitForSelector('text=Payment received');
  await page.getByRole('link', { name: 'Receipt' }).click();
  await page.waitForSelector('dd:has-text("€15.00")');
  await page.screenshot({ path: `${artifacts}billing-receipt-${backend}.png`, fullPage: true });
  await page.goto(base + '/billing');
  await page.waitForSelector('h2:has-text("Plan: Pro")');

  // Bill owns the deployment's workspace: he sees the assistant's providers and reloads them.
  await page.goto(base + '/admin/assistant');
  await page.waitForSelector('tr[data-provider="fake"] [data-circuit="closed"]');
  await page.getByRole('button', { name: 'Reload from the configuration' }).click();
  await page.waitForSelector('text=Providers and models reloaded');
  assert.deepEqual(errors, []);
  await context.close();
});
