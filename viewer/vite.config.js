// The viewer bundle: one ES module (viewer.js) and its stylesheet, built into the folder the app serves.
import { defineConfig } from 'vite'

export default defineConfig({
  publicDir: false,
  build: {
    outDir: '../app/viewer/static',
    emptyOutDir: true,
    target: 'es2020',
    sourcemap: false,
    chunkSizeWarningLimit: 4000,
    rollupOptions: {
      input: 'src/main.ts',
      output: {
        entryFileNames: 'viewer.js',
        chunkFileNames: '[name]-[hash].js',
        assetFileNames: (info) => (info.name && info.name.endsWith('.css') ? 'viewer.css' : '[name]-[hash][extname]'),
      },
    },
  },
})
