// The admin area in a real Chromium: every page renders whole (no script errors, the layout
// in place, nothing overflowing sideways) and is screenshotted; a person is disabled and
// enabled again from the users page; the edge policy is previewed, saved and in force; and a
// theme chosen in the preferences recolours the pages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { artifacts, backend, base, chromiumForTests } from './support.mjs';

const browser = chromiumForTests();

const pages = [
  ['/admin', 'Dashboard'],
  ['/admin/users', 'Users'],
  ['/admin/tenants', 'Workspaces'],
  ['/admin/rooms', 'Rooms'],
  ['/admin/jobs', 'Jobs'],
  ['/admin/backups', 'Backups'],
  ['/admin/assistant', 'Assistant providers'],
  ['/admin/billing', 'Billing'],
  ['/admin/audit', 'Audit log'],
  ['/admin/settings', 'Settings'],
  ['/admin/caches', 'Caches'],
  ['/admin/edge', 'Edge policy'],
];

async function signIn(page) {
  await page.goto(base + '/login');
  await page.getByLabel('Email').fill(process.env.CONCLAVE_ADMIN_EMAIL);
  await page.getByLabel('Password').fill(process.env.CONCLAVE_TEST_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(base + '/');
}

/// What "not broken" means for a page: its title, the admin navigation beside the content,
/// the stylesheet applied, and nothing wider than the window.
async function assertWhole(page, title) {
  await page.waitForSelector(`h1#admin-title:has-text("${title}")`);
  const layout = await page.evaluate(() => {
    const nav = document.querySelector('.admin-nav')?.getBoundingClientRect();
    const main = document.querySelector('.admin-main')?.getBoundingClientRect();
    return {
      grid: getComputedStyle(document.querySelector('.admin-layout')).display,
      navBeside: nav && main && nav.right <= main.left && nav.height > 100,
      overflow: document.documentElement.scrollWidth - window.innerWidth,
    };
  });
  assert.equal(layout.grid, 'grid', `${title}: the stylesheet is applied`);
  assert.match(await page.locator('.site-footer').innerText(), /Conclave \d+\.\d+\.\d+/, `${title}: the footer`);
  assert.ok(layout.navBeside, `${title}: the navigation sits beside the content`);
  assert.ok(layout.overflow <= 0, `${title}: nothing overflows sideways (${layout.overflow}px)`);
}

test('admin: every page renders whole, people are managed, the edge policy is saved', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  await signIn(page);
  await page.getByRole('link', { name: 'Admin' }).click();
  for (const [path, title] of pages) {
    await page.goto(base + path);
    await assertWhole(page, title);
    const name = path.replace(/^\/admin\/?/, '') || 'dashboard';
    await page.screenshot({ path: `${artifacts}admin-${name}-${backend}.png`, fullPage: true });
  }

  // Disable Katherine, then enable her again.
  await page.goto(base + '/admin/users?q=katherine');
  const row = page.locator('tr[data-user="katherine@example.com"]');
  await row.getByRole('button', { name: 'Disable' }).click();
  await page.waitForSelector('text=Account disabled; its sessions ended.');
  await page.locator('tr[data-user="katherine@example.com"] [data-state="disabled"]').waitFor();
  await page.locator('tr[data-user="katherine@example.com"]').getByRole('button', { name: 'Enable' }).click();
  await page.waitForSelector('text=Account enabled.');

  // A backup taken now appears in the list, and the age of the newest is shown.
  await page.goto(base + '/admin/backups');
  await page.waitForSelector('text=No backup yet.');
  await page.getByRole('button', { name: 'Back up now' }).click();
  await page.waitForSelector('text=Backup queued');
  let listed = 0;
  for (let i = 0; i < 50 && listed === 0; i += 1) {
    await page.waitForTimeout(200);
    await page.goto(base + '/admin/backups');
    listed = await page.locator('tr[data-backup]').count();
  }
  assert.equal(listed, 1, 'the backup is listed');
  assert.match(await page.locator('#backup-age').innerText(), /just now|minute/);
  assert.match(await page.locator('tr[data-backup]').innerText(), new RegExp(`${backend === 'postgres' ? 'postgres' : 'sqlite'} · schema \\d+`));
  await page.screenshot({ path: `${artifacts}admin-backups-taken-${backend}.png`, fullPage: true });

  // The edge policy: a draft is previewed (nothing saved), then saved and in force.
  await page.goto(base + '/admin/edge');
  const policy = JSON.parse(await page.locator('#policy').inputValue());
  policy.headers = [{ name: 'X-Robots-Tag', value: 'noindex; nofollow' }];
  await page.locator('#policy').fill(JSON.stringify(policy, null, 2));
  await page.getByRole('button', { name: 'Preview' }).click();
  await page.waitForSelector('text=Preview of the draft below');
  await page.locator('details[data-format="nginx"] summary').click();
  await page.waitForSelector('details[data-format="nginx"] code:has-text(\'add_header X-Robots-Tag "noindex; nofollow" always;\')');
  await page.getByLabel('What changed').fill('no indexing');
  await page.getByRole('button', { name: 'Save as a new version' }).click();
  await page.waitForSelector('text=Saved as a new version');
  const active = await page.locator('[data-active-version]').getAttribute('data-active-version');
  assert.ok(Number(active) >= 1);
  const header = await page.evaluate(async () => (await fetch('/healthz')).headers.get('x-robots-tag'));
  assert.equal(header, 'noindex; nofollow');
  // A bad value is refused with its field, and shown next to the draft.
  policy.headers = [{ name: 'X-Bad', value: 'a"b' }];
  await page.locator('#policy').fill(JSON.stringify(policy));
  await page.getByRole('button', { name: 'Save as a new version' }).click();
  await page.waitForSelector('text=headers[0].value');
  await page.screenshot({ path: `${artifacts}admin-edge-refused-${backend}.png`, fullPage: true });

  // The audit log shows the save, with the filter applied.
  await page.goto(base + '/admin/audit?action=edge.');
  await page.waitForSelector('tr[data-event="edge.policy_saved"]');

  // A theme from the preferences recolours every page.
  await page.goto(base + '/settings/preferences');
  await page.getByLabel('Theme').selectOption('dark');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.waitForSelector('text=Saved.');
  await page.goto(base + '/admin');
  assert.equal(await page.locator('html').getAttribute('data-theme'), 'dark');
  const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(background, 'rgb(15, 20, 27)');
  await page.screenshot({ path: `${artifacts}admin-dark-${backend}.png`, fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
});
