// Rooms in a real Chromium: create a room, post Markdown, reply, edit, search with highlights,
// page back through history — all with plain forms (JavaScript is not needed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const browser = chromiumForTests();

test('a room: create, post Markdown, reply, edit, search, page back — without JavaScript', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, javaScriptEnabled: false });
  const page = await context.newPage();
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(process.env.CONCLAVE_ROOMS_EMAIL);
  await page.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');

  await page.getByRole('link', { name: 'Rooms' }).click();
  await page.getByLabel('Name').fill('launch');
  await page.getByLabel('Topic (optional)').fill('Rocket <b>plans</b>');
  await page.getByRole('button', { name: 'Create room' }).click();
  await page.waitForSelector('h1:has-text("# launch")');
  assert.match(await page.locator('.room-topic').innerText(), /Rocket <b>plans<\/b>/, 'the topic is text');

  const box = page.getByLabel('Message (Markdown)');
  await box.fill('Countdown starts at **nine**. <script>window.bad = 1</script>');
  await page.getByRole('button', { name: 'Send' }).click();
  await page.waitForSelector('.message-body strong:has-text("nine")');
  assert.match(await page.locator('.message-body').first().innerText(), /<script>/, 'raw HTML shows as text');

  await page.getByRole('link', { name: 'Reply' }).first().click();
  assert.match(await page.locator('#compose').innerText(), /Replying to Grace Hopper/);
  await page.getByLabel('Message (Markdown)').fill('Engines are ready for the countdown');
  await page.getByRole('button', { name: 'Send' }).click();
  await page.waitForSelector('.reply-quote');

  await page.getByRole('link', { name: 'Edit' }).last().click();
  await page.getByLabel('Message (Markdown)').fill('Engines are *fully* ready for the countdown');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.waitForSelector('.message-body em:has-text("fully")');
  assert.match(await page.locator('.message').last().innerText(), /\(edited\)/);
  await page.screenshot({ path: `${artifacts}room-${backend}.png`, fullPage: true });

  // Enough messages for a second page of history.
  for (let n = 0; n < 50; n++) {
    await page.getByLabel('Message (Markdown)').fill(`status update ${n}`);
    await page.getByRole('button', { name: 'Send' }).click();
    await page.waitForSelector(`.message-body:has-text("status update ${n}")`);
  }
  await page.getByRole('link', { name: 'Older messages' }).click();
  await page.waitForSelector('.message-body:has-text("Countdown starts")');
  await page.getByRole('link', { name: 'Newer messages' }).click();
  await page.waitForSelector('.message-body:has-text("status update 49")');

  await page.getByRole('link', { name: 'Search' }).click();
  await page.getByLabel('Words').fill('countdowns ready');
  await page.getByRole('button', { name: 'Search' }).click();
  await page.waitForSelector('.search-result');
  assert.equal(await page.locator('.search-result').count(), 1);
  assert.deepEqual(await page.locator('.search-result mark').allInnerTexts(), ['ready', 'countdown']);
  await page.screenshot({ path: `${artifacts}search-${backend}.png`, fullPage: true });
  await page.locator('.search-result a').click();
  await page.waitForSelector('.message:target');
  await context.close();
});

test('a private room: sealed with my password, unlocked and locked from its page; workspace defaults', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, javaScriptEnabled: false });
  const page = await context.newPage();
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(process.env.CONCLAVE_ROOMS_EMAIL);
  await page.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');

  await page.goto(base + '/rooms');
  await page.getByLabel('Name').fill('journal');
  await page.getByLabel('Invite-only — only people you add').check();
  await page.getByLabel('How its messages are kept').selectOption('private');
  await page.getByRole('button', { name: 'Create room' }).click();
  await page.waitForSelector('h1:has-text("# journal")');
  assert.match(await page.locator('.room-header').innerText(), /sealed with your password/);
  await page.waitForSelector('h2:has-text("This private room is locked")');
  await page.screenshot({ path: `${artifacts}private-locked-${backend}.png`, fullPage: true });

  await page.getByLabel('Password').fill('not it');
  await page.getByRole('button', { name: 'Unlock' }).click();
  await page.waitForSelector('.form-error:has-text("password")');
  await page.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await page.getByRole('button', { name: 'Unlock' }).click();
  await page.waitForSelector('.form-notice:has-text("unlocked")');
  await page.getByLabel('Message (Markdown)').fill('Only I can read this');
  await page.getByRole('button', { name: 'Send' }).click();
  await page.waitForSelector('.message-body:has-text("Only I can read this")');
  await page.screenshot({ path: `${artifacts}private-open-${backend}.png`, fullPage: true });
  await page.getByRole('button', { name: 'Lock private conversations now' }).click();
  await page.waitForSelector('h2:has-text("This private room is locked")');
  assert.equal(await page.locator('.message-body').count(), 0, 'nothing shows while locked');

  // The workspace's conversation defaults.
  await page.goto(base + '/workspaces');
  await page.getByLabel('Privacy of new rooms').selectOption('ephemeral');
  await page.getByLabel('Keep messages for (days)').fill('30');
  await page.getByRole('button', { name: 'Save settings' }).click();
  await page.waitForSelector('.form-notice:has-text("Settings saved")');
  assert.equal(await page.getByLabel('Keep messages for (days)').inputValue(), '30');
  await page.screenshot({ path: `${artifacts}workspace-settings-${backend}.png`, fullPage: true });
  await page.getByLabel('Privacy of new rooms').selectOption('standard');
  await page.getByLabel('Keep messages for (days)').fill('');
  await page.getByRole('button', { name: 'Save settings' }).click();
  await page.waitForSelector('.form-notice:has-text("Settings saved")');
  await context.close();
});
