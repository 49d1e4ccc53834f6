// Creating an account in a real Chromium: the form, the verification mail (read from the
// file transport's directory), the link, and the first sign-in.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const base = process.env.CONCLAVE_URL;
const backend = process.env.CONCLAVE_BACKEND ?? 'sqlite';
const mailDir = join(process.env.CONCLAVE__DATA_DIR, 'mail');
const artifacts = new URL('./artifacts/', import.meta.url).pathname;
let browser;

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
});

after(async () => {
  await browser?.close();
});

/** Waits for the mail to `to` and returns its verification link (quoted-printable undone). */
async function verificationLink(to) {
  return linkInMail(to, /https?:\/\/\S+\/verify\?token=[A-Za-z0-9_-]+/);
}

async function linkInMail(to, pattern) {
  for (let i = 0; i < 100; i += 1) {
    let files = [];
    try { files = readdirSync(mailDir).filter((f) => f.endsWith('.eml')); } catch { /* not yet */ }
    for (const file of files) {
      const raw = readFileSync(join(mailDir, file), 'utf8')
        .replace(/=\r?\n/g, '')
        .replace(/=([0-9A-F]{2})/g, (_, hex) => String.fromCharCode(parseInt(hex, 16)));
      if (raw.includes(`To: ${to}`)) {
        const match = raw.match(pattern);
        if (match) return match[0];
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`no verification mail to ${to}`);
}

test('a new person creates an account, confirms it from the mail, and signs in', async () => {
  const email = `grace.${backend}@example.com`;
  const password = 'nanoseconds are eleven inches';
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.goto(base + '/login');
  await page.getByRole('link', { name: 'Create an account' }).click();
  await page.waitForURL(base + '/signup');

  // A weak password is refused, and what was typed stays.
  await page.getByLabel('Your name').fill('Grace Hopper');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill('password123');
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.waitForSelector('.form-error');
  assert.match(await page.locator('.form-error').innerText(), /most common passwords/);
  assert.equal(await page.getByLabel('Your name').inputValue(), 'Grace Hopper');
  assert.equal(await page.getByLabel('Email').inputValue(), email);

  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.waitForSelector('h1:has-text("Check your inbox")');
  await page.screenshot({ path: `${artifacts}signup-sent-${backend}.png` });

  await page.goto(await verificationLink(email));
  assert.equal(await page.locator('h1').innerText(), 'Address confirmed');
  await page.locator('main').getByRole('link', { name: 'Sign in' }).click();
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');
  assert.match(await page.locator('.signed-in').innerText(), /Grace Hopper/);
  await context.close();
});

test('a person who forgot their password gets a link by mail and chooses a new one', async () => {
  const email = process.env.CONCLAVE_RESET_EMAIL;
  const newPassword = `a brand new passphrase for ${backend}`;
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  await page.goto(base + '/login');
  await page.getByRole('link', { name: 'Forgot your password?' }).click();
  await page.getByLabel('Email').fill(email);
  await page.getByRole('button', { name: 'Send the link' }).click();
  await page.waitForSelector('h1:has-text("Check your inbox")');

  await page.goto(await linkInMail(email, /https?:\/\/\S+\/reset\?token=[A-Za-z0-9_-]+/));
  await page.locator('#password').fill(newPassword);
  await page.getByRole('button', { name: 'Set the new password' }).click();
  await page.waitForURL(/\/login\?notice=password_reset/);
  assert.match(await page.locator('.form-notice').innerText(), /Your password was changed/);
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(newPassword);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');
  assert.match(await page.locator('.signed-in').innerText(), /Katherine Johnson/);
  await context.close();
});
