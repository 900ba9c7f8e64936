/// <reference types="vitest/config" />
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// The gateway serves dist/ at / (services/gateway/console.py): hashed files under
// /assets/ are cached as immutable, index.html is revalidated on every load.
export default defineConfig({
  plugins: [react()],
  base: '/',
  build: { outDir: 'dist', assetsDir: 'assets', sourcemap: false, chunkSizeWarningLimit: 4000 },
  server: { proxy: { '/v1': 'http://127.0.0.1:8000', '/model-card': 'http://127.0.0.1:8000' } },
  test: { include: ['tests/**/*.test.ts'], environment: 'node' },
});
