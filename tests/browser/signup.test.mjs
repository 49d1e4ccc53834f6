// Creating an account in a real Chromium: the form, the verification mail (read from the
// file transport's directory), the link, and the first sign-in.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHmac } from 'node:crypto';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const mailDir = join(process.env.CONCLAVE__DATA_DIR, 'mail');
const browser = chromiumForTests();

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
  await page.getByRole('button', { name: 'Confirm my address' }).click();
  await page.waitForSelector('h1:has-text("Address confirmed")');
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

/** RFC 6238 with Node's own HMAC-SHA1: independent of the server's TOTP library. */
function totp(base32Secret, unixSeconds) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of base32Secret.replace(/=+$/, '').toUpperCase()) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(unixSeconds / 30)));
  const digest = createHmac('sha1', key).update(counter).digest();
  const offset = digest[19] & 0x0f;
  const binary = (digest.readUInt32BE(offset) & 0x7fffffff) % 1000000;
  return String(binary).padStart(6, '0');
}

test('the whole path: sign up, verify, turn on 2FA, sign in with a code', async () => {
  const email = `alan.${backend}@example.com`;
  const password = 'the imitation game is on';
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(base + '/signup');
  await page.getByLabel('Your name').fill('Alan Turing');
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.waitForSelector('h1:has-text("Check your inbox")');
  await page.goto(await verificationLink(email));
  await page.getByRole('button', { name: 'Confirm my address' }).click();
  await page.waitForSelector('h1:has-text("Address confirmed")');
  await page.locator('main').getByRole('link', { name: 'Sign in' }).click();
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');

  await page.getByRole('link', { name: 'Security' }).click();
  await page.getByRole('button', { name: 'Turn on two-factor authentication' }).click();
  await page.waitForSelector('.qr svg');
  await page.screenshot({ path: `${artifacts}2fa-scan-${backend}.png`, fullPage: true });
  const secret = (await page.locator('.secret-key').innerText()).trim();
  await page.getByLabel('Code from the app').fill(totp(secret, Date.now() / 1000));
  await page.getByRole('button', { name: 'Turn on two-factor authentication' }).click();
  await page.waitForSelector('h2:has-text("Your recovery codes")');
  assert.equal(await page.locator('.codes li').count(), 10);
  await page.screenshot({ path: `${artifacts}2fa-codes-${backend}.png`, fullPage: true });
  await page.getByRole('link', { name: 'I have saved them' }).click();
  await page.getByRole('button', { name: 'Sign out' }).first().click();
  await page.waitForURL(base + '/');

  await page.getByRole('link', { name: 'Sign in' }).click();
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(/\/login\/2fa/);
  // The next step's code: the confirmation used the current one, and codes work once.
  await page.getByLabel('Code').fill(totp(secret, Date.now() / 1000 + 30));
  await page.getByLabel(/Remember this device/).check();
  await page.getByRole('button', { name: 'Verify' }).click();
  await page.waitForURL(base + '/');
  assert.match(await page.locator('.signed-in').innerText(), /Alan Turing/);
  await context.close();
});
