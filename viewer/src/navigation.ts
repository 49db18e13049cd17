// Layout, zoom and slice paging (client side), the slice line, and telling the server what is shown.
import { SLICE_TYPE } from '@niivue/niivue'
import type { Viewer } from './viewer'
import { AXIS_OF, SLICE_OF } from './geometry'
import { apiUrl, traceMark } from './util'

export const navigationMethods = {
  applyLayout(this: Viewer): void {
    this.breakStroke()
    const is2d = this.state?.is2d
    if (this.three && !is2d) this.nv.setSliceType(SLICE_TYPE.MULTIPLANAR)
    else this.nv.setSliceType(SLICE_OF[this.currentView] ?? SLICE_TYPE.AXIAL)
    const b = this.root.querySelector('#layout-btn')
    if (b) b.textContent = this.three ? '1 view' : '3 views'
    this.root.setAttribute('data-layout', this.three ? 'three' : 'one')
    this.drawOverlay()
  },

  toggleLayout(this: Viewer): void {
    if (this.state?.is2d) return
    this.three = !this.three
    this.applyLayout()
  },

  // both show the zoom in the corner at once: the keys (+, -, 0) and Fit left it saying the zoom before
  resetZoom(this: Viewer): void {
    this.breakStroke()
    this.nv.setPan2Dxyzmm([0, 0, 0, 1] as any)
    this.drawOverlay()
    this.showInfo()
  },

  zoom(this: Viewer, factor: number): void {
    this.breakStroke()
    const p = this.nv.scene.pan2Dxyzmm
    this.nv.setPan2Dxyzmm([p[0], p[1], p[2], Math.min(20, Math.max(0.5, p[3] * factor))] as any)
    this.drawOverlay()
    this.showInfo()
  },

  moveTo(this: Viewer, mm: number[], view: string): void {
    const frac = this.nv.mm2frac(mm as any, 0, true)
    const cross = this.nv.scene.crosshairPos
    const axis = AXIS_OF[view]
    const next = [cross[0], cross[1], cross[2]]
    next[axis] = frac[axis]
    this.nv.scene.crosshairPos = next as any
    this.nv.drawScene()
  },

  /** Page the current view by n slices of the study's own grid (client side only; the server learns it later). */
  page(this: Viewer, n: number): void {
    if (!this.nv.volumes.length) return
    const { sign } = this.nativeAxis(this.currentView)
    const d = [0, 0, 0]
    d[AXIS_OF[this.currentView]] = n * sign
    this.nv.moveCrosshairInVox(d[0], d[1], d[2])
    this.afterNavigate()
  },

  afterNavigate(this: Viewer): void {
    this.cutStrokeAtSlice()
    this.showInfo()
    window.clearTimeout(this.viewTimer)
    this.viewTimer = window.setTimeout(() => this.reportView(), 300)
  },

  showInfo(this: Viewer): void {
    if (!this.nv.volumes.length || !this.state?.study) return
    const view = this.currentView
    const { index, count } = this.sliceOf(view)
    const mm = this.crosshairMM()
    const axisName = ['x', 'y', 'z'][AXIS_OF[view]]
    const vol = this.nv.volumes[0]
    const wl = this.state.rgb ? '' : ` · W ${Math.round(vol.cal_max! - vol.cal_min!)} L ${Math.round((vol.cal_max! + vol.cal_min!) / 2)}`
    this.info.textContent = `${view} slice ${index} (0–${count - 1}) · ${axisName} = ${mm[AXIS_OF[view]].toFixed(1)} mm${wl} · zoom ${this.nv.scene.pan2Dxyzmm[3].toFixed(1)}×${this.anchorNote(view, index)}`
    this.root.setAttribute('data-slice', String(index))
    this.root.setAttribute('data-view', view)
    this.publishShown()
  },

  /** The active label's anchors, in the slice line: a corrected slice is kept by every re-propagation, and the user
   * saw nowhere which slices were (paging to one says so; elsewhere in that view, where they are). */
  anchorNote(this: Viewer, view: string, index: number): string {
    const anchors = this.state?.anchors ?? []
    const active = this.state?.active ?? 1
    this.root.setAttribute('data-anchors', anchors.join(','))
    if (!anchors.length || view !== this.state?.acquisition) return ''
    if (anchors.includes(index)) return ` · anchor of label ${active}: propagation keeps this slice`
    const listed = anchors.slice(0, 8).join(', ') + (anchors.length > 8 ? ', …' : '')
    return ` · label ${active}'s anchor${anchors.length > 1 ? 's' : ''}: slice${anchors.length > 1 ? 's' : ''} ${listed}`
  },

  /** The shown plane into the page's hidden #viewer-shown box, at once: the buttons that act on the shown slice
   * (Propagate, one-shot, mask file) send it with their event. The server learns of paging 300 ms later and
   * behind queued prompts, so a button pressed right after paging ran on the slice shown before. */
  publishShown(this: Viewer): void {
    const box = document.querySelector('#viewer-shown textarea, #viewer-shown input') as HTMLInputElement | null
    if (!box || !this.study) return
    const text = JSON.stringify({ study: this.study, view: this.currentView, mm: this.crosshairMM() })
    if (box.value === text) return
    box.value = text
    box.dispatchEvent(new Event('input', { bubbles: true }))
  },

  reportView(this: Viewer): void {
    if (!this.state?.study) return
    this.enqueue({ kind: 'view', view: this.currentView, mm: this.crosshairMM() }, null, true)
  },

  requestEncode(this: Viewer): void {
    if (this.encodeBusy) { this.encodeAgain = true; return }
    this.encodeBusy = true
    const shown = this.statusSeq  // "Ready" is news only if no other message came while it encoded
    traceMark('encode.sent')
    fetch(apiUrl('encode'), { method: 'POST' })
      .then(async (r) => {
        const a = await r.json()
        traceMark('encode.received')
        if (!a.ok || this.inFlight !== 0) return
        if (this.readyWanted && a.encoded) { this.readyWanted = false; this.addReady(a.status || a.ready) }
        else if (a.status && this.statusSeq === shown) this.addReady(a.status)
      })
      .catch(() => undefined)
      .finally(() => {
        this.encodeBusy = false
        if (this.encodeAgain) { this.encodeAgain = false; this.requestEncode() }
      })
  },
}

export type NavigationMethods = typeof navigationMethods
