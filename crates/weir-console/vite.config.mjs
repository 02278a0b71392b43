// Builds the console (`web/index.html`) and GraphiQL (`web/graphiql.html`) into `assets/`,
// which the crate embeds (build.rs). Pages are served at `/` and `/graphiql`; every other file
// lands under /console/assets/ with a content hash in its name (served as immutable). Nothing
// is inlined as a data: URL by the build and no module-preload polyfill is injected, so the
// pages load only same-origin files under a strict content security policy.
import { resolve } from 'node:path';
import { defineConfig } from 'vite';

const web = resolve(import.meta.dirname, 'web');

export default defineConfig({
  root: web,
  base: '/console/',
  logLevel: 'warn',
  build: {
    outDir: resolve(import.meta.dirname, 'assets'),
    emptyOutDir: true,
    assetsDir: 'assets',
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    target: 'es2022',
    // GraphiQL (with React and its editor) is one large chunk, loaded only on /graphiql.
    chunkSizeWarningLimit: 2048,
    rolldownOptions: {
      input: {
        console: resolve(web, 'index.html'),
        graphiql: resolve(web, 'graphiql.html'),
      },
      onwarn(warning, warn) {
        // React libraries mark modules "use client"; meaningless in a plain bundle.
        if (warning.code === 'MODULE_LEVEL_DIRECTIVE') return;
        warn(warning);
      },
    },
  },
});
