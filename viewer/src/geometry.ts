// Screen <-> world coordinates: the view and millimetres under a canvas point, the study's own grid.
import { SLICE_TYPE } from '@niivue/niivue'
import type { Viewer } from './viewer'

export const VIEW_OF: Record<number, string> = { 0: 'axial', 1: 'coronal', 2: 'sagittal' }
export const SLICE_OF: Record<string, SLICE_TYPE> = { axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL }
export const AXIS_OF: Record<string, number> = { sagittal: 0, coronal: 1, axial: 2 } // RAS axis held fixed by a view

export const geometryMethods = {
  canvasXY(this: Viewer, e: MouseEvent): [number, number] {
    const r = this.canvas.getBoundingClientRect()
    // the page zoomed by CSS (``zoom`` on the page or an ancestor: an embedding page, a zoom extension): the event's
    // and the rectangle's pixels are the window's, the canvas's own (NiiVue's, the overlay's) are unzoomed. At 50 %
    // a click landed twice as far from the canvas's corner as the mouse: on another structure, or off the image
    const kx = r.width ? this.canvas.clientWidth / r.width : 1
    const ky = r.height ? this.canvas.clientHeight / r.height : 1
    return [(e.clientX - r.left) * kx, (e.clientY - r.top) * ky]
  },

  /** The stage sized for the page's CSS zoom (an embedding page's, a zoom extension's; not the browser's own, which
   * changes the window's CSS size): its height is the window's less the toolbar's and status line's, on the screen. */
  fitStageToZoom(this: Viewer): void {
    const shown = this.stage.offsetHeight
    if (!shown) return
    const k = String(Math.round((this.stage.getBoundingClientRect().height / shown) * 100) / 100)
    if (k !== '0' && k !== this.root.style.getPropertyValue('--mv-zoom')) this.root.style.setProperty('--mv-zoom', k)
  },

  /** The view and world position under a canvas point (CSS pixels), or null outside the slices. */
  pick(this: Viewer, x: number, y: number): { view: string; mm: number[] } | null {
    const dpr = (this.nv.uiData as any).dpr || window.devicePixelRatio || 1
    const tile = this.nv.tileIndex(x * dpr, y * dpr)
    if (tile < 0) return null
    const view = VIEW_OF[this.nv.screenSlices[tile].axCorSag as number]
    if (!view) return null
    const frac = this.nv.canvasPos2frac([x * dpr, y * dpr])
    if (frac[0] < 0) return null
    const mm = this.nv.frac2mm(frac as any, 0, true)
    return { view, mm: [mm[0], mm[1], mm[2]] }
  },

  toCanvas(this: Viewer, mm: number[], view: string): [number, number] | null {
    const frac = this.nv.mm2frac(mm as any, 0, true)
    const cross = this.nv.scene.crosshairPos
    const axis = AXIS_OF[view]
    const dims = (this.nv.volumes[0] as any).dimsRAS as number[]
    if (Math.abs(frac[axis] - cross[axis]) > 0.5 / dims[axis + 1] + 1e-6) return null // another slice
    const dpr = (this.nv.uiData as any).dpr || 1
    for (const s of this.nv.screenSlices) {
      if (VIEW_OF[s.axCorSag as number] !== view) continue
      const r = (this.nv as any).frac2canvasPosWithTile(frac, s.axCorSag)
      if (r && r.pos) return [r.pos[0] / dpr, r.pos[1] / dpr]
    }
    return null
  },

  /** The image's edge between a canvas point inside it and one outside (bisection on the segment). */
  edgeBetween(this: Viewer, xi: number, yi: number, xo: number, yo: number, view: string): { view: string; mm: number[] } | null {
    const inside = (t: number) => this.pick(xi + t * (xo - xi), yi + t * (yo - yi))?.view === view
    if (!inside(0)) return null
    let a = 0, b = 1
    for (let i = 0; i < 16; i++) { const m = (a + b) / 2; if (inside(m)) a = m; else b = m }
    return this.pick(xi + a * (xo - xi), yi + a * (yo - yi))
  },

  /** A box dragged past the image's edge (into the tile's letterbox or off the canvas): its corner clamped to
   * the image, per screen axis, from the drag's start (inside). Clamping to the tile alone left the corner in
   * the letterbox, where nothing is picked, and the box was dropped without a word. */
  pickClamped(this: Viewer, x: number, y: number, x0: number, y0: number, view: string): { view: string; mm: number[] } | null {
    const inside = (px: number, py: number) => this.pick(px, py)?.view === view
    const edge = (from: number, to: number, at: (v: number) => boolean): number => {
      if (at(to)) return to
      let a = from, b = to  // at(a) holds, at(b) does not
      for (let i = 0; i < 16 && Math.abs(b - a) > 0.25; i++) { const m = (a + b) / 2; if (at(m)) a = m; else b = m }
      return a
    }
    if (!inside(x0, y0)) return null
    const cx = edge(x0, x, (v) => inside(v, y0))
    const cy = edge(y0, y, (v) => inside(cx, v))
    return this.pick(cx, cy)
  },

  /** The stored grid's axis (0 i, 1 j, 2 k) a view steps through, and whether it runs along the RAS axis. */
  nativeAxis(this: Viewer, view: string): { c: number; sign: number } {
    const A = (this.nv.volumes[0].hdr as any).affine as number[][]
    const r = AXIS_OF[view]
    let c = 0
    for (let k = 1; k < 3; k++) if (Math.abs(A[r][k]) > Math.abs(A[r][c])) c = k
    return { c, sign: Math.sign(A[r][c]) || 1 }
  },

  /** The shown slice of a view as the server counts it (the index along the stored grid, from 0). */
  sliceOf(this: Viewer, view: string): { index: number; count: number } {
    const hdr = this.nv.volumes[0].hdr as any
    const A = hdr.affine as number[][]
    const mm = this.crosshairMM()
    const m = [0, 1, 2].map((r) => [A[r][0], A[r][1], A[r][2]])
    const b = [0, 1, 2].map((r) => mm[r] - A[r][3])
    const det = (q: number[][]) => q[0][0] * (q[1][1] * q[2][2] - q[1][2] * q[2][1]) - q[0][1] * (q[1][0] * q[2][2] - q[1][2] * q[2][0]) + q[0][2] * (q[1][0] * q[2][1] - q[1][1] * q[2][0])
    const D = det(m)
    const { c } = this.nativeAxis(view)
    const mc = m.map((row, r) => row.map((v, k) => (k === c ? b[r] : v)))
    const count = hdr.dims[c + 1]
    const index = Math.min(count - 1, Math.max(0, Math.round(det(mc) / D)))
    return { index, count }
  },

  crosshairMM(this: Viewer): number[] {
    const mm = this.nv.frac2mm(this.nv.scene.crosshairPos as any, 0, true)
    return [mm[0], mm[1], mm[2]]
  },

  brushRadiusCss(this: Viewer, x: number, y: number): number {
    return (this.brushPx / 2) * this.voxelCss(x, y)
  },

  /** CSS pixels a voxel of the study spans on the screen at a canvas point (0 off the slices): the brush's ring,
   * the keyboard cursor's step. */
  voxelCss(this: Viewer, x: number, y: number): number {
    const dpr = (this.nv.uiData as any).dpr || 1
    const tile = this.nv.tileIndex(x * dpr, y * dpr)
    if (tile < 0) return 0
    const s = this.nv.screenSlices[tile]
    const pix = (this.nv.volumes[0] as any).pixDimsRAS as number[] | undefined
    const mmPerVoxel = pix ? Math.min(pix[1], pix[2], pix[3]) : 1
    // the field of view's width is negative where the view is flipped (the radiological convention shows the
    // patient's right on the left): the radius came out negative, the ring was drawn as a 2 px dot whatever the
    // brush size (the cursor is hidden over the image) and the stroke's trail as a hairline
    const pxPerMM = Math.abs(s.leftTopWidthHeight[2] / s.fovMM[0]) / dpr
    return mmPerVoxel * pxPerMM
  },
}

export type GeometryMethods = typeof geometryMethods
