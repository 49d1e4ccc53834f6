// Stored and reflected XSS, in a real Chromium with JavaScript on: Xavier (whose display name
// is itself a payload) puts payloads into every field people can write — workspace, room name
// and topic, a message, a device's name and chip, an API token's name, an assistant chat's
// title — and then opens every page that shows them, plus a search and a 404 that reflect
// the URL. Each page must show the payloads as text: no element the payloads would create,
// no event-handler attribute, no script without the page's nonce, nothing run, and no
// Content-Security-Policy violation (which would mean markup got through and only the CSP
// stopped it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const browser = chromiumForTests();

// Each payload marks the window if it ever runs, and leaves a tell-tale element if it is
// parsed as markup.
const payloads = [
  '<img src=x id=xss-img onerror="window.__pwned=1">',
  '"><svg id=xss-svg onload="window.__pwned=1">',
  "'><script id=xss-script>window.__pwned=1</script>",
  '</title><iframe id=xss-frame srcdoc="<script>parent.__pwned=1</script>"></iframe>',
];
const payload = (n) => payloads[n % payloads.length];

async function api(context, method, path, data) {
  const csrf = (await context.cookies(base)).find((c) => c.name === 'conclave_csrf')?.value;
  const response = await context.request.fetch(base + path, {
    method,
    headers: { 'X-CSRF-Token': csrf ?? '', 'Content-Type': 'application/json' },
    data: data === undefined ? undefined : JSON.stringify(data),
  });
  const body = await response.text();
  assert.ok(response.ok(), `${method} ${path}: ${response.status()} ${body}`);
  return body ? JSON.parse(body) : null;
}

/// Opens `path` and checks that nothing a payload carries became markup or ran.
async function inert(page, path) {
  const violations = [];
  page.removeAllListeners('dialog');
  page.on('dialog', async (dialog) => {
    violations.push(`dialog: ${dialog.message()}`);
    await dialog.dismiss();
  });
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample}`);
    });
  });
  const response = await page.goto(base + path);
  assert.ok(response.status() < 500, `${path}: ${response.status()}`);
  await page.waitForLoadState('networkidle');
  const found = await page.evaluate(() => ({
    pwned: window.__pwned === 1,
    planted: document.querySelectorAll('#xss-img, #xss-svg, #xss-script, #xss-frame, #xss-name').length,
    handlers: [...document.querySelectorAll('*')].filter((el) =>
      [...el.attributes].some((a) => a.name.startsWith('on'))).map((el) => el.outerHTML.slice(0, 120)),
    scripts: [...document.querySelectorAll('script')].filter((s) => !s.nonce && !s.src).length,
    jsLinks: [...document.querySelectorAll('a[href]')].filter((a) =>
      a.getAttribute('href').trim().toLowerCase().startsWith('javascript:')).length,
    csp: window.__csp,
  }));
  assert.equal(found.pwned, false, `${path}: a payload ran`);
  assert.equal(found.planted, 0, `${path}: a payload became markup`);
  assert.deepEqual(found.handlers, [], `${path}: event-handler attributes`);
  assert.equal(found.scripts, 0, `${path}: inline scripts without the nonce`);
  assert.equal(found.jsLinks, 0, `${path}: javascript: links`);
  assert.deepEqual(found.csp, [], `${path}: CSP violations`);
  assert.deepEqual(violations, [], `${path}: dialogs`);
  return page;
}

test('payloads in every field people write stay text on every page that shows them', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(process.env.CONCLAVE_XSS_EMAIL);
  await page.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');

  const workspace = await api(context, 'POST', '/api/v1/tenants', { name: payload(0), slug: 'xss-lab' });
  const room = await api(context, 'POST', '/api/v1/rooms',
    { tenant_id: workspace.id, name: payload(1), topic: payload(2) });
  await api(context, 'POST', `/api/v1/rooms/${room.id}/messages`, {
    body: `${payload(3)} and [a link](javascript:window.__pwned=1) and <a href="javascript:alert(1)">raw</a> ` +
      `and ![img](x" onerror="window.__pwned=1) and ${payload(0)}`,
  });
  const claim = await api(context, 'POST', `/api/v1/tenants/${workspace.id}/devices/claims`,
    { name: payload(1), kind: 'sensor', tags: ['lab'] });
  // The device redeems its code as a device does: no cookies.
  const claimed = await fetch(base + '/api/v1/devices/claim', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ code: claim.code, firmware: '1.0.0', chip: 'esp32c3' }),
  });
  assert.equal(claimed.status, 201, await claimed.clone().text());
  const device = (await claimed.json()).device;
  await api(context, 'POST', '/api/v1/me/tokens', { name: payload(2), scopes: ['read'] });
  const chat = await api(context, 'POST', '/api/v1/assistant/chats', {});
  await api(context, 'PATCH', `/api/v1/assistant/chats/${chat.chat?.id ?? chat.id}`, { title: payload(2) });

  const chatId = chat.chat?.id ?? chat.id;
  for (const path of [
    '/',
    '/rooms',
    `/rooms/${room.id}`,
    `/rooms/${room.id}?q=${encodeURIComponent(payload(0))}`,
    '/workspaces',
    `/workspaces/${workspace.id}`,
    '/devices',
    `/devices/${device.id}`,
    '/settings/tokens',
    '/settings/security',
    '/assistant',
    `/assistant/${chatId}`,
    `/search?q=${encodeURIComponent(payload(1))}`,
    `/search?q=${encodeURIComponent('x')}&room=${encodeURIComponent(payload(2))}`,
    `/${encodeURIComponent(payload(3))}`,
    '/admin/users',
    '/admin/tenants',
    '/admin/rooms',
    '/admin/audit',
  ]) {
    await inert(page, path);
  }
  // The payloads are there, as text.
  await inert(page, `/rooms/${room.id}`);
  assert.match(await page.locator('body').innerText(), /<svg id=xss-svg onload=/);
  assert.match(await page.locator('body').innerText(), /<img src=x id=xss-img onerror=/);
  await page.screenshot({ path: `${artifacts}xss-room-${backend}.png`, fullPage: true });
  await context.close();
});
