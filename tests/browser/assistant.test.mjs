// The assistant in a real Chromium: a chat starts from the first question, the answer streams
// in and gets a title, Stop keeps the partial answer (marked), code is highlighted and listed
// as an artifact, the last answer can be regenerated, and the model picker sticks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const browser = chromiumForTests();

test('assistant chat: streaming, title, stop, code and artifacts, regenerate, model picker', async () => {
  const context = await browser.newContext({ viewport: { width: 1400, height: 950 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(process.env.CONCLAVE_ASSISTANT_EMAIL);
  await page.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');

  await page.getByRole('link', { name: 'Assistant' }).click();
  await page.waitForSelector('h1:has-text("Assistant")');
  const options = await page.locator('select[name="model"] option').allTextContents();
  assert.ok(options.some((o) => o.includes('Quick')) && options.some((o) => o.includes('Smart')), options.join());
  await page.screenshot({ path: `${artifacts}assistant-home-${backend}.png` });
  await page.getByLabel('Your first message').fill('hello assistant');
  await page.getByRole('button', { name: 'Start chat' }).click();
  await page.waitForURL(/\/assistant\/\d+$/);
  const chatUrl = page.url();
  await page.waitForSelector('.live-status[data-state="live"]');
  await page.waitForSelector('li.from-assistant .message-body:has-text("You said: hello assistant")');
  // The title job names the chat; the heading and the list follow without a reload.
  await page.waitForSelector('h1#room-title:has-text("Greeting the assistant")');
  await page.waitForSelector('.chat-list li.current:has-text("Greeting the assistant")');

  // A long answer streams into a bubble; Stop keeps what came, marked.
  const box = page.getByLabel(/^Message/);
  await box.fill('tell me a long story');
  await box.press('Enter');
  await page.waitForSelector('li.answer-open .streaming:has-text("word5")');
  assert.equal(page.url(), chatUrl, 'sent over the socket, not a form post');
  await page.screenshot({ path: `${artifacts}assistant-streaming-${backend}.png` });
  await page.locator('li.answer-open button.stop').click();
  const stopped = page.locator('li.from-assistant:has(.answer-state[data-state="stopped"])');
  await stopped.waitFor();
  const kept = await stopped.locator('.message-body').textContent();
  assert.ok(kept.includes('word1') && !kept.includes('word200'), kept);
  assert.equal(await page.locator('li.answer-open').count(), 0, 'no spinner is left');

  // Code comes highlighted, with a Copy button, and shows up as an artifact.
  await box.fill('code please');
  await box.press('Enter');
  await page.waitForSelector('li.from-assistant pre code.hljs');
  await page.waitForSelector('li.from-assistant .copy-code');
  await page.waitForSelector('.artifact-list .artifact:has-text("src/main.rs")');
  const download = await page.locator('.artifact-list .artifact a:has-text("Download")').getAttribute('href');
  const file = await page.evaluate(async (href) => (await fetch(href)).text(), download);
  assert.ok(file.includes('println!("hi");'), file);

  // Regenerate: the last answer is replaced.
  const answersBefore = await page.locator('li.from-assistant:not(.deleted)').count();
  await page.getByRole('button', { name: /Regenerate the last answer/ }).click();
  await page.waitForSelector('li.from-assistant.deleted');
  await page.waitForFunction((n) => document.querySelectorAll('li.from-assistant:not(.deleted) pre code').length >= 1
    && document.querySelectorAll('li.from-assistant:not(.deleted)').length === n, answersBefore);

  // The model picker saves at once.
  await page.locator('#chat-model').selectOption('smart');
  await page.waitForTimeout(300);
  await page.reload();
  assert.equal(await page.locator('#chat-model').inputValue(), 'smart');
  await page.screenshot({ path: `${artifacts}assistant-${backend}.png`, fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
});

test('the assistant in a group room: switched on from the room page, answers a mention live', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(process.env.CONCLAVE_ASSISTANT_EMAIL);
  await page.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');
  await page.goto(base + '/rooms');
  await page.getByLabel('Name').fill(`assistant-room-${backend}`);
  await page.getByRole('button', { name: 'Create room' }).click();
  await page.waitForSelector(`h1:has-text("# assistant-room-${backend}")`);
  await page.getByLabel(/Answer @assistant in this room/).check();
  await page.locator('form[action$="/assistant"] button:has-text("Save")').click();
  await page.waitForSelector('.form-notice:has-text("The assistant now answers @assistant")');
  await page.waitForSelector('.live-status[data-state="live"]');
  await page.getByLabel('Message (Markdown)').fill('@assistant what time is it');
  await page.getByRole('button', { name: 'Send' }).click();
  await page.waitForSelector('li.from-assistant .message-body:has-text("@assistant what time is it")');
  await page.getByLabel('Message (Markdown)').fill('just chatting');
  await page.getByRole('button', { name: 'Send' }).click();
  await page.waitForSelector('li.message .message-body:has-text("just chatting")');
  await page.waitForTimeout(500);
  assert.equal(await page.locator('li.from-assistant').count(), 1, 'no mention, no answer');
  await page.screenshot({ path: `${artifacts}assistant-room-${backend}.png`, fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
});

test('guest mode: a visitor without an account gets a streamed answer and can stop one', async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(base + '/guest');
  await page.waitForSelector('h1:has-text("Try the assistant")');
  const cookies = await context.cookies();
  const guest = cookies.find((c) => c.name === 'conclave_guest');
  assert.ok(guest && guest.httpOnly && guest.value.length === 22, JSON.stringify(cookies));
  const before = Number(await page.locator('.remaining').textContent());
  await page.getByLabel('Message').fill('hello as a guest');
  await page.getByLabel('Message').press('Enter');
  await page.waitForSelector('li.from-assistant .message-body:has-text("You said: hello as a guest")');
  await page.waitForFunction((n) => Number(document.querySelector('.remaining').textContent) === n - 1, before);
  assert.equal(page.url(), base + '/guest', 'streamed in place, not a form post');

  await page.getByLabel('Message').fill('a long story please');
  await page.getByRole('button', { name: 'Send' }).click();
  await page.waitForSelector('li.from-assistant .message-body:has-text("word3")');
  await page.getByRole('button', { name: 'Stop' }).click();
  await page.waitForSelector('li.from-assistant .answer-state[data-state="stopped"]');
  // The conversation is kept for the visitor (in the server's memory) across a reload.
  await page.reload();
  await page.waitForSelector('.message-body:has-text("hello as a guest")');
  await page.screenshot({ path: `${artifacts}guest-${backend}.png`, fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
});
