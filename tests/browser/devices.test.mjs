// Adding a device in a real Chromium: the claim code and its QR code are shown once, the
// device (here, a fetch standing in for it) exchanges the code for its token, the device
// appears in the list, and revoking its token from its page takes effect.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const browser = chromiumForTests();

test('devices: a claim code provisions a device, whose token is then revoked', async () => {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(process.env.CONCLAVE_DEVICES_EMAIL);
  await page.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');

  await page.getByRole('link', { name: 'Devices' }).click();
  await page.getByLabel('Name').fill(`Greenhouse ${backend}`);
  await page.getByLabel('Kind').fill('esp32c3');
  await page.getByLabel('Tags (comma-separated)').fill('lab, floor-2');
  await page.getByRole('button', { name: 'Create a claim code' }).click();
  const code = (await page.locator('#claim-code').innerText()).trim();
  assert.match(code, /^[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}$/);
  const qr = await page.locator('.qr svg').boundingBox();
  assert.ok(qr && qr.width >= 150, 'the QR code is drawn');
  await page.screenshot({ path: `${artifacts}devices-claim-${backend}.png`, fullPage: true });

  // The device's side: no session, just the code (a separate request context).
  const device = await browser.newContext();
  const response = await device.request.post(base + '/api/v1/devices/claim', {
    data: { code, firmware: '1.0.0', chip: 'esp32c3' },
  });
  assert.equal(response.status(), 201);
  const { token } = await response.json();
  assert.equal((await device.request.get(base + '/api/v1/device', { headers: { Authorization: `Bearer ${token}` } })).status(), 200);

  // It connects with its token and sends two batches of readings.
  const acks = await page.evaluate(async (token) => {
    const socket = new WebSocket(location.origin.replace('http', 'ws') + '/api/v1/ws', ['conclave.v1', `bearer.${token}`]);
    const frames = [];
    await new Promise((resolve, reject) => {
      socket.onmessage = (event) => {
        frames.push(JSON.parse(event.data));
        if (frames.length === 3) resolve();
      };
      socket.onerror = reject;
      socket.onopen = () => {
        socket.send(JSON.stringify({ hello: { protocol: 1, firmware: '1.0.0', chip: 'esp32c3', capabilities: ['telemetry'] } }));
        for (const [seq, value] of [[1, 21.5], [2, 23.0]]) {
          socket.send(JSON.stringify({ telemetry: { seq, at_ms: Date.now() - (3 - seq) * 60000, readings: [{ metric: 'temperature', value }] } }));
        }
      };
    });
    socket.close();
    return frames.map((frame) => Object.keys(frame)[0]);
  }, token);
  assert.deepEqual(acks, ['welcome', 'telemetry_ack', 'telemetry_ack']);

  await page.goto(base + '/devices');
  await page.getByRole('link', { name: `Greenhouse ${backend}` }).click();
  await page.waitForSelector('text=floor-2, lab');
  await page.waitForSelector('figure[data-metric="temperature"] svg circle');
  assert.match(await page.locator('figure[data-metric="temperature"] figcaption').innerText(), /max 23/);
  await page.screenshot({ path: `${artifacts}devices-chart-${backend}.png`, fullPage: true });
  await page.getByRole('button', { name: 'Revoke token' }).click();
  await page.waitForSelector('text=Token revoked');
  await page.screenshot({ path: `${artifacts}devices-revoked-${backend}.png`, fullPage: true });
  assert.equal((await device.request.get(base + '/api/v1/device', { headers: { Authorization: `Bearer ${token}` } })).status(), 401);
  assert.deepEqual(errors, []);
  await device.close();
  await context.close();
});
