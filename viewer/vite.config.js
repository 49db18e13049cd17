// The viewer bundle: one ES module (viewer.js) and its stylesheet, built into the folder the app serves.
import { defineConfig } from 'vite'

// NiiVue 0.69 recomputes the image's 3D gradient texture (a blur and a Sobel pass over every slice, with a GPU
// round trip per slice) each time the image layer is refreshed, a window/level change included. Only its 3D
// volume rendering reads that texture, which this viewer never shows: the refresh skips it while
// `opts.skipGradient` is set (the viewer sets it once, viewer.ts: a study's load skips it too, ~0.25 s of a
// software renderer's CPU). The build fails if NiiVue's code changed, rather than ship without the skip unnoticed.
const GRADIENT = `      this.volumeTexture = outTexture;
      this.gradientTexture = gradientGL({`
function skipGradientOption() {
  return {
    name: 'niivue-skip-gradient-option',
    transform(code, id) {
      if (!/@niivue[\\/]niivue[\\/]build[\\/]niivue[\\/]index\.js$/.test(id)) return null
      if (code.split(GRADIENT).length !== 2) throw new Error('niivue-skip-gradient-option: NiiVue changed, update vite.config.js')
      return { code: code.replace(GRADIENT, GRADIENT.replace('this.gradientTexture =', 'if (!this.opts.skipGradient) this.gradientTexture =')), map: null }
    },
  }
}

export default defineConfig({
  publicDir: false,
  plugins: [skipGradientOption()],
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
