// A live room in a real Chromium: messages, typing and presence arrive without a reload, and
// the room stays readable offline, where what is written waits in the outbox and goes out
// exactly once when the connection returns.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const password = process.env.CONCLAVE_TEST_PASSWORD;
const [hedyEmail, alanEmail] = (process.env.CONCLAVE_LIVE_EMAILS ?? '').split(' ');
const browser = chromiumForTests();

async function signIn(email) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`page error (${email}):`, error));
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');
  return { context, page };
}

const live = (page) => page.waitForSelector('.live-status[data-state="live"]');

test('a live room: messages, typing and presence without reloads; offline reading and an outbox that sends once', async () => {
  const hedy = await signIn(hedyEmail);
  const alan = await signIn(alanEmail);

  await hedy.page.goto(base + '/rooms');
  await hedy.page.getByLabel('Name').fill(`live-${backend}`);
  await hedy.page.getByRole('button', { name: 'Create room' }).click();
  await hedy.page.waitForSelector(`h1:has-text("# live-${backend}")`);
  const roomUrl = hedy.page.url().split('?')[0];
  const room = Number(roomUrl.split('/').pop());
  await live(hedy.page);

  await alan.page.goto(roomUrl);
  await alan.page.getByRole('button', { name: 'Join this room to post' }).click();
  await alan.page.waitForSelector('#compose');
  await live(alan.page);
  const alanId = await alan.page.locator('section.room').getAttribute('data-me');

  // Presence: Hedy sees Alan come online (the member list gains him on reload; his dot goes green live).
  await hedy.page.reload();
  await live(hedy.page);
  await hedy.page.waitForSelector(`li[data-user="${alanId}"] .presence[data-state="online"]`);

  // Typing, then a message, both without a reload on Hedy's side.
  const box = alan.page.getByLabel('Message (Markdown)');
  await box.pressSequentially('hello from');
  await hedy.page.waitForSelector('.typing:not([hidden]):has-text("Alan Turing is typing")');
  await box.fill('hello from **Alan**');
  await alan.page.getByRole('button', { name: 'Send' }).click();
  await hedy.page.waitForSelector('.message-body strong:has-text("Alan")');
  await alan.page.waitForSelector('li.message:not(.pending) .message-body strong:has-text("Alan")');
  assert.equal(await alan.page.locator('.message-body:has-text("hello from")').count(), 1, 'the sender sees it once');
  assert.equal(alan.page.url().split('?')[0], roomUrl, 'sent over the socket, not by a form post');

  // Offline: the service worker keeps the page, IndexedDB what came in since.
  await hedy.page.evaluate(() => navigator.serviceWorker.ready.then(() => true));
  await hedy.page.reload();
  await live(hedy.page);
  assert.ok(await hedy.page.evaluate(() => Boolean(navigator.serviceWorker.controller)), 'the page is controlled');
  await hedy.context.setOffline(true);
  await hedy.page.waitForSelector('.live-status[data-state="offline"]');

  await alan.page.getByLabel('Message (Markdown)').fill('while Hedy is away');
  await alan.page.getByRole('button', { name: 'Send' }).click();
  await alan.page.waitForSelector('li.message:not(.pending) .message-body:has-text("while Hedy is away")');

  await hedy.page.reload();
  await hedy.page.waitForSelector('.message-body strong:has-text("Alan")');
  await hedy.page.waitForSelector('.live-status[data-state="offline"]');
  assert.equal(await hedy.page.locator('.message-body:has-text("while Hedy is away")').count(), 0);
  await hedy.page.getByLabel('Message (Markdown)').fill('written offline');
  await hedy.page.getByRole('button', { name: 'Send' }).click();
  await hedy.page.waitForSelector('li.pending:has-text("written offline")');
  await hedy.page.screenshot({ path: `${artifacts}live-offline-${backend}.png`, fullPage: true });

  // Back online: what was missed arrives, the outbox goes out, once.
  await hedy.context.setOffline(false);
  await live(hedy.page);
  await hedy.page.waitForSelector('.message-body:has-text("while Hedy is away")');
  await hedy.page.waitForSelector('li.message:not(.pending) .message-body:has-text("written offline")');
  assert.equal(await hedy.page.locator('li.pending').count(), 0);
  await alan.page.waitForSelector('.message-body:has-text("written offline")');
  const stored = await alan.page.evaluate(async (id) => {
    const response = await fetch(`/api/v1/rooms/${id}/messages`);
    return (await response.json()).messages.filter((m) => m.body === 'written offline').length;
  }, room);
  assert.equal(stored, 1, 'stored exactly once');
  await hedy.page.reload();
  await live(hedy.page);
  assert.equal(await hedy.page.locator('.message-body:has-text("written offline")').count(), 1);
  await hedy.page.screenshot({ path: `${artifacts}live-${backend}.png`, fullPage: true });
  await alan.page.screenshot({ path: `${artifacts}live-other-${backend}.png`, fullPage: true });

  // Signing out forgets this browser's copy.
  await hedy.page.getByRole('button', { name: 'Sign out' }).click();
  await hedy.page.waitForSelector('a:has-text("Sign in")');
  await hedy.page.waitForFunction(async () => {
    const names = (await indexedDB.databases()).map((d) => d.name);
    return !names.includes('conclave') && (await caches.keys()).length === 0;
  });
  await hedy.context.close();
  await alan.context.close();
});
