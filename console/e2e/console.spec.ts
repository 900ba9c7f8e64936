// The console in Chromium against a real `covidct up`: sign-in, a resumable tus upload of
// COVID-CT-MD P002 (tab closed at about half, reopened, resumed from the server's offset),
// the job watched to its verdict, a corrupt upload, tenant isolation, deletion, axe.
import { expect, test, type Browser, type BrowserContext, type Page } from '@playwright/test';
import AxeBuilder from '@axe-core/playwright';
import { mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through tests/e2e/test_console.py)`);
  return value;
};
const KEY_A = env('KEY_A');
const KEY_B = env('KEY_B');
const STUDY = env('STUDY_ZIP');
const EXPECTED_LABEL = env('EXPECTED_LABEL');
const EXPECTED_P_COVID = Number(env('EXPECTED_P_COVID'));
const EXPECTED_PATTERN = process.env.EXPECTED_PATTERN ?? '';
const EXPECTED_CATEGORY = process.env.EXPECTED_CATEGORY ?? '';
const STUDY_DIR = process.env.STUDY_DIR;
const ARTIFACTS = process.env.ARTIFACT_DIR ?? 'test-results';
const JOB_TIMEOUT_MS = Number(process.env.JOB_TIMEOUT_MS ?? 480_000);

test.describe.configure({ mode: 'serial' });

let context: BrowserContext;
let studyJobId = '';

async function signIn(page: Page, key: string): Promise<void> {
  await page.goto('/');
  await page.getByRole('tab', { name: 'For integrators' }).click(); // people sign in with a password
  await page.getByLabel('API key').fill(key);
  await page.getByRole('button', { name: 'Sign in with the key' }).click();
}

async function addFile(page: Page, path: string): Promise<void> {
  await page.locator('.uppy-Dashboard-input').first().setInputFiles(path);
  await expect(page.locator('.uppy-Dashboard-Item')).toHaveCount(1);
}

async function startUpload(page: Page): Promise<void> {
  await page.locator('.uppy-StatusBar-actionBtn--upload').click();
}

async function seriousViolations(page: Page): Promise<string[]> {
  const result = await new AxeBuilder({ page }).analyze();
  return result.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`);
}

async function api(page: Page, key: string, method: string, path: string) {
  return page.request.fetch(path, { method, headers: { Authorization: `Bearer ${key}`, 'Tus-Resumable': '1.0.0' } });
}

test.beforeAll(async ({ browser }: { browser: Browser }) => {
  context = await browser.newContext();
});

test.afterAll(async () => {
  await context.close();
});

test('1. a wrong key is refused with a message; the right one shows an empty job list', async () => {
  const page = await context.newPage();
  await signIn(page, 'cct_not-a-real-key');
  await expect(page.getByRole('alert')).toContainText('API key was not accepted');
  expect(page.url()).not.toContain('cct_');
  await page.getByLabel('API key').fill(KEY_A);
  await page.getByRole('button', { name: 'Sign in with the key' }).click();
  await expect(page.getByText('No jobs yet')).toBeVisible();
  expect(page.url()).not.toContain(KEY_A);
  expect(await seriousViolations(page)).toEqual([]);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await expect(page.getByLabel('Username', { exact: true })).toBeVisible();
  expect(await page.evaluate(() => sessionStorage.length)).toBe(0);
  await page.close();
});

test('2. an upload closed at about half resumes from the server offset', async () => {
  const size = statSync(STUDY).size;
  const page = await context.newPage();
  // Slow the upload down (each PATCH waits before it goes out) so the tab can be closed mid-way.
  await page.route('**/v1/uploads/**', async (route) => {
    if (route.request().method() === 'PATCH') await new Promise((r) => setTimeout(r, 400));
    await route.continue().catch(() => undefined);
  });
  await signIn(page, KEY_A);
  await expect(page.getByText('No jobs yet')).toBeVisible();
  await addFile(page, STUDY);
  const half = new Promise<void>((resolve) => {
    page.on('response', (response) => {
      const offset = Number(response.headers()['upload-offset'] ?? 0);
      if (response.request().method() === 'PATCH' && offset >= size / 2) resolve();
    });
  });
  await startUpload(page);
  await half;
  await expect(page.getByTestId('upload-speed')).toContainText(/at .+\/s, about .+ left/);
  await page.screenshot({ path: join(ARTIFACTS, 'upload-progress.png') });
  await page.close(); // the tab goes away mid-upload

  // The job is still waiting for its study; the server kept the bytes acknowledged so far.
  const check = await context.newPage();
  await check.goto('/');
  const list = await (await api(check, KEY_A, 'GET', '/v1/jobs')).json();
  expect(list.total).toBe(1);
  studyJobId = list.items[0].id;
  expect(list.items[0].status).toBe('awaiting_upload');
  const uploadUrl = await check.evaluate(() => {
    for (let i = 0; i < localStorage.length; i++) {
      const name = localStorage.key(i)!;
      if (name.startsWith('tus::')) return JSON.parse(localStorage.getItem(name)!).uploadUrl as string;
    }
    return '';
  });
  expect(uploadUrl).toContain('/v1/uploads/');
  const head = await api(check, KEY_A, 'HEAD', uploadUrl);
  const serverOffset = Number(head.headers()['upload-offset']);
  expect(serverOffset).toBeGreaterThan(0);
  expect(serverOffset).toBeLessThan(size);
  await check.close();

  // Reopen the console, add the same file: the first PATCH starts at the server's offset.
  const page2 = await context.newPage();
  const requests: { method: string; offset: string | undefined }[] = [];
  page2.on('request', (request) => {
    if (request.url().includes('/v1/uploads')) requests.push({ method: request.method(), offset: request.headers()['upload-offset'] });
  });
  await page2.route('**/v1/uploads/**', async (route) => {
    if (route.request().method() === 'PATCH') await new Promise((r) => setTimeout(r, 400));
    await route.continue().catch(() => undefined);
  });
  await signIn(page2, KEY_A);
  await expect(page2.getByTestId('jobs-table')).toContainText('awaiting upload');
  await addFile(page2, STUDY);
  await startUpload(page2);
  // Issue 20.8: opening the job page mid-upload keeps the upload going, its progress shown.
  await expect(page2.getByTestId('upload-speed')).toContainText(/of .+ at .+\/s, about .+ left/);
  await page2.getByRole('link', { name: /P002/ }).click();
  await expect(page2.getByTestId('timeline')).toBeVisible();
  await expect(page2.getByTestId('upload-speed')).toContainText('1 upload');
  await expect
    .poll(async () => (await (await api(page2, KEY_A, 'GET', `/v1/jobs/${studyJobId}`)).json()).status, { timeout: 120_000 })
    .not.toBe('awaiting_upload');
  await page2.getByRole('link', { name: '← Jobs' }).click();
  await expect(page2.locator('.uppy-StatusBar.is-complete')).toBeVisible({ timeout: 120_000 });
  const patches = requests.filter((r) => r.method === 'PATCH');
  expect(requests.filter((r) => r.method === 'POST')).toEqual([]); // no new upload created
  expect(Number(patches[0].offset)).toBe(serverOffset);
  const after = await (await api(page2, KEY_A, 'GET', '/v1/jobs')).json();
  expect(after.total).toBe(1); // the same job, not a second one
  expect(after.items[0].id).toBe(studyJobId);
  await page2.close();
});

test('3. the job reaches succeeded without a reload, with the floor verdict, plot and heatmap', async () => {
  const page = await context.newPage();
  const cspViolations: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
  });
  await signIn(page, KEY_A);
  await page.getByRole('link', { name: /P002/ }).click();
  await expect(page.getByTestId('verdict')).toHaveText(EXPECTED_LABEL, { timeout: JOB_TIMEOUT_MS });
  const pCovid = Number(await page.getByTestId('p-COVID').getAttribute('data-value'));
  await expect(page.getByTestId('p-COVID')).toHaveText(EXPECTED_P_COVID.toFixed(2)); // two decimals shown
  expect(Math.abs(pCovid - EXPECTED_P_COVID)).toBeLessThan(1e-3);
  // A whole-lung HU series shows the RSNA pattern it was read as (P002: typical).
  if (EXPECTED_PATTERN) await expect(page.getByTestId('ct-pattern')).toHaveText(EXPECTED_PATTERN);
  // Ensemble v3: the category comes first, with the lesion measurements and the overlay switch.
  if (EXPECTED_CATEGORY) {
    const headline = page.getByTestId('verdict-headline');
    await expect(headline).toHaveAttribute('data-category', EXPECTED_CATEGORY);
    await expect(headline).not.toContainText('NonCOVID'); // issue 20.5: the category, never the label
    await expect(page.getByTestId('headline-explanation')).toContainText('likelihood ratio');
    await expect(page.getByTestId('opacity')).toContainText('%');
    await expect(page.getByTestId('lesion-legend')).toBeVisible();
  }
  const slices = await (await api(page, KEY_A, 'GET', `/v1/jobs/${studyJobId}/slices`)).json();
  const kept = slices.slices.filter((s: { kept: boolean }) => s.kept).length;
  await expect(page.getByTestId('slice-plot')).toHaveAttribute('data-points', String(kept));
  await expect(page.getByTestId('slice-plot').locator('canvas')).toBeVisible();
  await expect(page.getByTestId('heatmap')).toBeVisible();
  await expect(page.getByRole('img', { name: /as the model saw it/ })).toBeVisible();
  // Keyboard stepping moves to the next kept slice.
  const viewer = page.getByTestId('slice-viewer');
  const before = await viewer.getAttribute('data-slice');
  await viewer.focus();
  await page.keyboard.press('ArrowRight');
  await expect(viewer).not.toHaveAttribute('data-slice', before ?? '');
  await page.keyboard.press('ArrowLeft');
  await expect(viewer).toHaveAttribute('data-slice', before ?? '');
  await expect(page.getByTestId('timeline')).toContainText('ensembling');
  // Issue 20.1: the identifiers of the study and series the verdict was computed on.
  const job = await (await api(page, KEY_A, 'GET', `/v1/jobs/${studyJobId}`)).json();
  await expect(page.getByTestId('series-uid')).toHaveText(job.result.series.series_instance_uid);
  await expect(page.getByTestId('study-uid')).toHaveText(job.result.series.study_instance_uid);
  // Issue 20.7: the printable report, downloaded with the key (never in a URL).
  const download = page.waitForEvent('download');
  await page.getByTestId('report-pdf').click();
  expect((await download).suggestedFilename()).toMatch(/\.pdf$/);
  // Issue 20.4: the native slice, window presets, W/L drag, zoom, orientation, overlays.
  const native = page.getByTestId('native-viewer');
  await expect(native.getByRole('img', { name: /at native resolution/ })).toBeVisible();
  await expect(native).toHaveAttribute('data-window', 'lung');
  await expect(page.getByTestId('native-position')).toContainText('instance');
  await expect(page.getByTestId('orientation-left')).toHaveText(/^[RLAPHF]$/);
  await page.getByText('Mediastinal window').click();
  await expect(native).toHaveAttribute('data-window', 'mediastinal');
  const box = (await native.boundingBox())!;
  await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width / 2 + 50, box.y + box.height / 2 + 25, { steps: 5 });
  await page.mouse.up();
  await expect(native).toHaveAttribute('data-window', '600,140');
  await page.getByRole('button', { name: 'Zoom in' }).click();
  await expect(native).toHaveAttribute('data-zoom', '1.5');
  await page.getByRole('switch', { name: 'Show the lung mask' }).click();
  await expect(page.getByTestId('lung-mask-overlay')).toBeVisible();
  // Issue 20.4: the verdict's lesion masks and the slice CNN's Grad-CAM on the native slice,
  // at its own geometry (registered by the server through the recorded crop).
  type NativeSlice = { index: number; image_url: string | null; lesion_overlay_url: string | null; gradcam_url: string | null };
  const shown = (slices.slices as NativeSlice[]).filter((s) => s.image_url).sort((a, b) => a.index - b.index);
  const target = shown.findIndex((s) => s.gradcam_url);
  expect(target).toBeGreaterThanOrEqual(0); // the top-k slices have one
  await native.focus();
  const at = Number(await native.getAttribute('data-slice'));
  const from = shown.findIndex((s) => s.index === at);
  for (let k = 0; k < Math.abs(target - from); k++) await page.keyboard.press(target > from ? 'ArrowRight' : 'ArrowLeft');
  await expect(native).toHaveAttribute('data-slice', String(shown[target].index));
  const natural = (testId: string) =>
    page.getByTestId(testId).evaluate((img: HTMLImageElement) => `${img.naturalWidth}x${img.naturalHeight}`);
  const nativeSize = await native
    .getByRole('img', { name: /at native resolution/ })
    .evaluate((img: HTMLImageElement) => `${img.naturalWidth}x${img.naturalHeight}`);
  await expect(page.getByTestId('gradcam-overlay')).toHaveCount(0); // optional, off by default
  await expect(page.getByText(/Grad-CAM of the slice CNN: .* not the verdict/)).toBeVisible();
  await page.getByRole('switch', { name: "Show the slice CNN's Grad-CAM" }).click();
  await expect(page.getByTestId('gradcam-overlay')).toBeVisible();
  expect(await natural('gradcam-overlay')).toBe(nativeSize);
  if (shown[target].lesion_overlay_url) {
    await expect(page.getByTestId('native-lesion-overlay')).toBeVisible(); // on by default
    expect(await natural('native-lesion-overlay')).toBe(nativeSize);
    await native.screenshot({ path: join(ARTIFACTS, 'native-overlays.png') });
    await page.getByRole('switch', { name: 'Show the lesion masks' }).click();
    await expect(page.getByTestId('native-lesion-overlay')).toHaveCount(0);
  }
  await page.getByRole('switch', { name: "Show the slice CNN's Grad-CAM" }).click();
  await expect(page.getByTestId('gradcam-overlay')).toHaveCount(0);
  await page.screenshot({ path: join(ARTIFACTS, 'job-page.png'), fullPage: true });
  expect(await seriousViolations(page)).toEqual([]);
  await page.goto('/#/');
  await page.mouse.move(0, 0); // the pointer left over a link would show its hover colour to axe
  await expect(page.getByTestId('jobs-table')).toContainText('succeeded');
  await page.screenshot({ path: join(ARTIFACTS, 'job-list.png'), fullPage: true });
  expect(await seriousViolations(page)).toEqual([]);
  expect(cspViolations).toEqual([]); // the strict CSP blocks nothing the console needs
  await page.close();
});

test('4. a corrupt file ends as a failed job with its error shown', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'covidct-'));
  const corrupt = join(dir, 'corrupt-study.zip');
  writeFileSync(corrupt, Buffer.concat([Buffer.from('PK\u0003\u0004'), Buffer.alloc(4096, 7)]));
  const page = await context.newPage();
  await signIn(page, KEY_A);
  await addFile(page, corrupt);
  await startUpload(page);
  await expect(page.locator('.uppy-StatusBar.is-complete')).toBeVisible({ timeout: 60_000 });
  await page.getByRole('link', { name: 'corrupt-study.zip' }).click();
  await expect(page.getByTestId('job-error')).toBeVisible({ timeout: 120_000 });
  await expect(page.getByTestId('job-error')).toContainText(/damaged|not supported|could not be read/);
  await page.screenshot({ path: join(ARTIFACTS, 'failed-job.png'), fullPage: true });
  await page.close();
});

test("5. another tenant's key sees none of the first tenant's jobs", async () => {
  const page = await context.newPage();
  await signIn(page, KEY_B);
  await expect(page.getByText('No jobs yet')).toBeVisible();
  await page.goto(`/#/jobs/${studyJobId}`);
  await expect(page.getByRole('alert')).toContainText('does not exist');
  expect((await api(page, KEY_B, 'GET', `/v1/jobs/${studyJobId}/slices/0.png`)).status()).toBe(404);
  await page.close();
});

test('6. a job is deleted after a confirmation', async () => {
  const page = await context.newPage();
  await signIn(page, KEY_A);
  await page.getByRole('link', { name: 'corrupt-study.zip' }).click();
  await page.getByRole('button', { name: 'Delete job' }).click();
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  await expect(page.getByText('Job deleted')).toBeVisible();
  await expect(page.getByTestId('jobs-table')).not.toContainText('corrupt-study.zip');
  await expect(page.getByTestId('jobs-table')).toContainText('P002');
  await page.close();
});

test('7. a dropped DICOM folder is zipped in the browser into one study', async () => {
  test.skip(!STUDY_DIR, 'STUDY_DIR not set');
  const page = await context.newPage();
  await signIn(page, KEY_B);
  await page.locator('.uppy-Dashboard-input[webkitdirectory]').setInputFiles(STUDY_DIR!);
  await expect(page.locator('.uppy-Dashboard-Item')).toHaveCount(1, { timeout: 60_000 });
  await expect(page.locator('.uppy-Dashboard-Item-name')).toContainText('.zip');
  expect(await seriousViolations(page)).toEqual([]);
  await page.close();
});

test('8. cancelling an upload deletes its job; leaving mid-upload asks first', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'covidct-'));
  const big = join(dir, 'cancelled-study.zip');
  writeFileSync(big, Buffer.alloc(12 * 1024 * 1024, 1)); // three chunks
  const page = await context.newPage();
  await page.route('**/v1/uploads/**', async (route) => {
    if (route.request().method() === 'PATCH') await new Promise((r) => setTimeout(r, 3000));
    await route.continue().catch(() => undefined);
  });
  await signIn(page, KEY_A);
  const before = (await (await api(page, KEY_A, 'GET', '/v1/jobs')).json()).total;
  await addFile(page, big);
  const patching = page.waitForRequest((r) => r.method() === 'PATCH' && r.url().includes('/v1/uploads/'));
  await startUpload(page);
  await patching;
  // Issue 20.10: one figure, never "0 files selected" while uploading.
  await expect(page.locator('.uppy-DashboardContent-title')).not.toContainText('0 files selected');
  const jobs = await (await api(page, KEY_A, 'GET', '/v1/jobs?status=awaiting_upload')).json();
  const job = jobs.items.find((j: { external_id: string }) => j.external_id === 'cancelled-study.zip');
  expect(job).toBeTruthy();
  // Leaving the page mid-upload asks first (beforeunload); staying keeps the upload.
  const dialog = new Promise<string>((resolve) =>
    page.once('dialog', (d) => {
      resolve(d.type());
      void d.dismiss();
    }),
  );
  await page.close({ runBeforeUnload: true });
  expect(await dialog).toBe('beforeunload');
  expect(page.isClosed()).toBe(false);
  // Issue 20.9: one action (Cancel), one final state (the job is gone, not left waiting).
  await page.locator('.uppy-DashboardContent-back').click();
  await expect.poll(async () => (await api(page, KEY_A, 'GET', `/v1/jobs/${job.id}`)).status()).toBe(404);
  expect((await (await api(page, KEY_A, 'GET', '/v1/jobs')).json()).total).toBe(before);
  await page.close();
});

test('9. DICOM files picked together become one study per series, not one job per file', async () => {
  test.skip(!STUDY_DIR, 'STUDY_DIR not set');
  const page = await context.newPage();
  await signIn(page, KEY_B);
  const slices = readdirSync(STUDY_DIR!)
    .filter((n) => n.endsWith('.dcm'))
    .sort()
    .slice(60, 63)
    .map((n) => join(STUDY_DIR!, n));
  expect(slices).toHaveLength(3);
  await page.locator('.uppy-Dashboard-input:not([webkitdirectory])').first().setInputFiles(slices);
  await expect(page.locator('.uppy-Dashboard-Item')).toHaveCount(1, { timeout: 60_000 });
  await expect(page.locator('.uppy-Dashboard-Item-name')).toContainText('.zip');
  await page.close();
});

test('10. the model card link opens a rendered page, not raw Markdown', async () => {
  const page = await context.newPage();
  await page.goto('/');
  await page.getByRole('link', { name: 'Model card' }).click();
  const card = page.getByTestId('model-card');
  await expect(card.locator('h1').first()).toBeVisible();
  await expect(card.locator('table').first()).toBeVisible();
  expect(await card.textContent()).not.toMatch(/^#\s/m);
  expect(await seriousViolations(page)).toEqual([]);
  await page.close();
});

test('11. the job list is a worklist: study columns, search, filter and sort on the server', async () => {
  const page = await context.newPage();
  await signIn(page, KEY_A);
  const table = page.getByTestId('jobs-table');
  for (const column of ['Patient', 'Accession', 'Study date', 'Series', 'Category', 'Status']) {
    await expect(table.getByRole('columnheader', { name: column })).toBeVisible();
  }
  const study = (await (await api(page, KEY_A, 'GET', `/v1/jobs/${studyJobId}`)).json()).study;
  if (study?.patient_id) await expect(table).toContainText(study.patient_id);
  const asked = page.waitForRequest((r) => r.url().includes('/v1/jobs?') && r.url().includes('q=no-such-patient'));
  await page.getByTestId('worklist-search').locator('input').fill('no-such-patient');
  await asked;
  await expect(page.getByText('No job matches these filters.')).toBeVisible();
  await page.getByTestId('worklist-search').locator('input').fill('P002');
  await expect(table.getByRole('link', { name: /P002/ })).toBeVisible();
  const sorted = page.waitForRequest((r) => r.url().includes('sort=study_date'));
  await table.getByRole('columnheader', { name: 'Study date' }).click();
  await sorted;
  const byPatient = page.waitForRequest((r) => r.url().includes('sort=patient_id'));
  await table.getByRole('columnheader', { name: 'Patient' }).click();
  await byPatient;
  const byAccession = page.waitForRequest((r) => r.url().includes('sort=accession_number'));
  await table.getByRole('columnheader', { name: 'Accession' }).click();
  await byAccession;
  // The study-date range goes to the server; P002's study date inside it, then outside.
  const dated = page.waitForRequest((r) => r.url().includes('study_date_from=1990-01-01') && r.url().includes('study_date_to=2099-12-31'));
  await page.getByTestId('study-date-from').fill('1990-01-01');
  await page.getByTestId('study-date-to').fill('2099-12-31');
  await dated;
  if (study?.study_date) await expect(table.getByRole('link', { name: /P002/ })).toBeVisible();
  else await expect(page.getByText('No job matches these filters.')).toBeVisible(); // no date: outside any range
  await page.getByTestId('study-date-from').fill('2099-01-01');
  await expect(page.getByText('No job matches these filters.')).toBeVisible();
  expect(await seriousViolations(page)).toEqual([]);
  await page.close();
});
