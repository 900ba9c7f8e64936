// Browser tests against a running `covidct up` stack (started by tests/e2e/test_console.py,
// which passes CONSOLE_URL, the tenants' keys and the study). Debian's Chromium only: no
// browser is ever downloaded.
import { defineConfig } from '@playwright/test';

export default defineConfig({
  testDir: 'e2e',
  workers: 1,
  fullyParallel: false,
  retries: 0,
  timeout: 600_000, // test 3 waits for the whole pipeline on a shared 2-core machine
  expect: { timeout: 15_000 },
  reporter: [['list']],
  outputDir: process.env.ARTIFACT_DIR ? `${process.env.ARTIFACT_DIR}/playwright` : 'test-results',
  use: {
    baseURL: process.env.CONSOLE_URL ?? 'http://127.0.0.1:8000',
    viewport: { width: 1280, height: 900 },
    actionTimeout: 15_000,
    navigationTimeout: 30_000,
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    },
  },
});
