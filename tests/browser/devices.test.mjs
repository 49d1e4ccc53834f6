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

test('devices at work: a room, a rule, commands from the page and /cmd, firmware and a rollout', { timeout: 120000 }, async () => {
  const { createHash, generateKeyPairSync, sign } = await import('node:crypto');
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(process.env.CONCLAVE_DEVICES_EMAIL);
  await page.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');
  const csrf = (await context.cookies()).find((c) => c.name === 'conclave_csrf').value;
  const api = async (method, path, data) => {
    const response = await page.request.fetch(base + path, { method, data, headers: { 'X-CSRF-Token': csrf } });
    return { status: response.status(), body: response.status() === 204 ? null : await response.json() };
  };
  const tenant = (await api('GET', '/api/v1/tenants')).body.tenants[0].id;
  const name = `pump-${backend}`;
  const claim = await api('POST', `/api/v1/tenants/${tenant}/devices/claims`, { name, kind: 'esp32c6', tags: ['field'] });
  assert.equal(claim.status, 201);
  const room = await api('POST', '/api/v1/rooms', { name: `plant-${backend}`, topic: 'pumps', visibility: 'public' });
  assert.equal(room.status, 201);

  // The device, in a browser context of its own (no session): claims its token, connects,
  // answers commands.
  const deviceContext = await browser.newContext();
  const devicePage = await deviceContext.newPage();
  await devicePage.goto(base + '/healthz');
  await devicePage.evaluate(async ({ code }) => {
    const claimed = await fetch('/api/v1/devices/claim', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ code }) });
    const { token } = await claimed.json();
    window.deviceToken = token;
    window.seq = 0;
    window.offers = [];
    const socket = new WebSocket(location.origin.replace('http', 'ws') + '/api/v1/ws', ['conclave.v1', `bearer.${token}`]);
    window.device = socket;
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.command) {
        const { id, name } = frame.command;
        const answer = name === 'ping' ? { status: 'succeeded', output: 'pong' } : { status: 'unknown', output: null };
        socket.send(JSON.stringify({ command_result: { id, ...answer } }));
      }
      if (frame.ota_offer) window.offers.push(frame.ota_offer);
    };
    await new Promise((resolve, reject) => { socket.onopen = resolve; socket.onerror = () => reject(new Error('the device socket did not open')); });
    socket.send(JSON.stringify({ hello: { protocol: 1, firmware: '1.0.0', chip: 'esp32c6', capabilities: ['telemetry', 'commands', 'ota'] } }));
  }, { code: claim.body.code });

  await page.goto(base + '/devices');
  await page.getByRole('link', { name }).click();
  await page.getByLabel('Add to').selectOption({ label: `plant-${backend}` });
  await page.getByRole('button', { name: 'Add to room' }).click();
  await page.waitForSelector('text=The device is in the room');
  await page.getByLabel('Metric').fill('pressure');
  await page.getByLabel('When it is').selectOption('above');
  await page.getByLabel('Threshold').fill('4.5');
  await page.getByRole('button', { name: 'Add rule' }).click();
  await page.waitForSelector('text=Rule added');
  assert.match(await page.locator('#rules').innerText(), /pressure above 4\.5/);
  await page.getByLabel('Command').fill('ping');
  await page.getByRole('button', { name: 'Send', exact: true }).click();
  await page.waitForSelector('text=Command sent');
  for (let i = 0; i < 40 && !(await page.locator('#commands').innerText()).includes('pong'); i++) {
    await page.waitForTimeout(100);
    await page.reload();
  }
  assert.match(await page.locator('#commands').innerText(), /ping\s+succeeded\s+pong/);
  await page.screenshot({ path: `${artifacts}devices-operations-${backend}.png`, fullPage: true });

  // A reading over the threshold posts into the room; /cmd from the room gets an answer there.
  await devicePage.evaluate(() => {
    window.device.send(JSON.stringify({ telemetry: { seq: 1, at_ms: 0, readings: [{ metric: 'pressure', value: 5.2 }] } }));
  });
  await page.goto(base + `/rooms/${room.body.id}`);
  await page.waitForSelector('.message-body:has-text("pressure is 5.2 — above 4.5")');
  await page.getByLabel('Message (Markdown)').fill(`/cmd ${name} ping`);
  await page.getByRole('button', { name: 'Send' }).click();
  await page.waitForSelector('.message-body:has-text("✓")', { timeout: 10000 });
  assert.match(await page.locator('.message').last().innerText(), new RegExp(name));
  await page.getByLabel('Message (Markdown)').fill('/cmd toaster ping');
  await page.getByRole('button', { name: 'Send' }).click();
  await page.waitForSelector(`text=devices in this room: ${name}`);
  await page.screenshot({ path: `${artifacts}devices-room-${backend}.png`, fullPage: true });

  // Firmware: a key, a signed image, a rollout to the tag; the device is offered the image.
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const publicHex = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32).toString('hex');
  await page.goto(base + '/devices/firmware');
  await page.waitForSelector('#keys-admins-only');
  assert.equal(await page.getByRole('button', { name: 'Add key' }).count(), 0, 'operators do not add signing keys');
  // An owner of the workspace adds the key.
  const ownerContext = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const owner = await ownerContext.newPage();
  await owner.goto(base + '/login');
  await owner.getByLabel('Email').fill(process.env.CONCLAVE_ADMIN_EMAIL);
  await owner.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await owner.getByRole('button', { name: 'Sign in' }).click();
  await owner.waitForURL(base + '/');
  await owner.goto(base + `/devices/firmware?tenant=${tenant}`);
  await owner.getByLabel('Name').fill('release');
  await owner.getByLabel('Public key (the .pub file)').fill(publicHex);
  await owner.getByRole('button', { name: 'Add key' }).click();
  await owner.waitForSelector('text=Key added');
  await ownerContext.close();
  const image = Buffer.from(`firmware for ${backend} `.repeat(500));
  const signature = sign(null, image, privateKey).toString('hex');
  const uploaded = await page.request.post(base + `/api/v1/tenants/${tenant}/firmware?version=2.0.0&signature=${signature}`, {
    data: image, headers: { 'X-CSRF-Token': csrf, 'Content-Type': 'application/octet-stream' },
  });
  assert.equal(uploaded.status(), 201);
  await page.reload();
  await page.getByLabel('Devices with the tag').fill('field');
  await page.getByLabel('Stages (cumulative %)').fill('50, 100');
  await page.getByRole('button', { name: 'Start rollout' }).click();
  await page.waitForSelector('text=Rollout started');
  await page.waitForSelector(`tr[data-device="${name}"]`);
  const offer = await devicePage.evaluate(async () => {
    for (let i = 0; i < 50 && window.offers.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
    return window.offers[0];
  });
  assert.equal(offer.version, '2.0.0');
  assert.equal(offer.sha256, createHash('sha256').update(image).digest('hex'));
  await devicePage.evaluate((offer) => {
    window.device.send(JSON.stringify({ ota_status: { rollout: offer.rollout, version: '2.0.0', state: 'failed', received: 0, detail: 'flash is full' } }));
  }, offer);
  for (let i = 0; i < 40 && !(await page.locator('#rollout-state').innerText()).includes('halted'); i++) {
    await page.waitForTimeout(100);
    await page.reload();
  }
  assert.equal((await page.locator('#rollout-state').innerText()).trim(), 'halted');
  assert.match(await page.locator('#rollout-devices').innerText(), /failed\s+flash is full/);
  await page.screenshot({ path: `${artifacts}devices-rollout-${backend}.png`, fullPage: true });
  assert.deepEqual(errors, []);
  await deviceContext.close();
  await context.close();
});
