// The image's window/level: applied on the GPU, a drag's result sent to the server.
import type { Viewer } from './viewer'

export const windowLevelMethods = {
  applyWindow(this: Viewer, w: { level: number; width: number }): void {
    const vol = this.nv.volumes[0]
    if (!vol) return
    const lo = w.level - w.width / 2, hi = w.level + w.width / 2
    if (Math.abs(vol.cal_min! - lo) < 1e-6 && Math.abs(vol.cal_max! - hi) < 1e-6) return
    vol.cal_min = lo
    vol.cal_max = hi
    if (this.slices.active) {
      // the viewer's slice shader windows the study's values itself (two uniforms): one frame, no texture pass
      this.nv.drawScene()
      this.showInfo()
      return
    }
    // NiiVue's own contrast path (its windowing drag): the image layer alone is drawn into its texture again;
    // updateGLVolume would redo the label layer too (a pass over the whole label map for nothing). Without the
    // 3D gradient (skipGradient, set once in viewer.ts): only volume rendering reads it, never shown here.
    this.nv.refreshLayers(vol, 0)
    this.nv.drawScene()
    this.showInfo()
  },

  /** The drag's window goes to the server 250 ms after the release (a second drag meanwhile replaces it): the
   * window dragged (``windowOwn``), not the volume's, which a state could have changed under the drag. */
  onWindowDragged(this: Viewer): void {
    const own = this.windowOwn
    if (!own || !this.nv.volumes[0] || this.state?.rgb) { this.windowOwn = null; return }
    this.applyWindow(own)
    this.showInfo()
    window.clearTimeout(this.windowTimer)
    this.windowTimer = window.setTimeout(() => this.enqueue({ kind: 'window', level: own.level, width: own.width }, null, true), 250)
  },
}

export type WindowLevelMethods = typeof windowLevelMethods
