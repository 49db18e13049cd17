// The keyboard cursor: a point on the focused image moved by the arrows, where Enter clicks and C marks a box's
// corners, for a user without a mouse or finger (session 25's second pass: the keyboard reached every tool and
// button, but a prompt needed the mouse). Its clicks (and C, C outside Point and Box) are the mouse's own events, sent
// to the canvas: the mouse's path (pointer.ts), whatever the tool; its boxes go to sendBox as the mouse's do (keyBox).
import type { Viewer } from './viewer'
import { AXIS_OF, VIEW_OF } from './geometry'

export type KeyMark = { view: string; mm: number[] }

const FAST = 10  // voxels a shift+arrow moves the cursor
const STEP: Record<string, [number, number]> = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }

export const keyCursorMethods = {
  /** K: the cursor shown (where it was left, or at NiiVue's crosshair on the view last used) and the image focused for
   * its keys; or hidden. */
  toggleKeyCursor(this: Viewer): void {
    if (this.keyCursor && this.keyCursorShown()) {
      this.keyCursor = null; this.keyMark = null
      this.showStatus('Keyboard cursor off.')
    } else {
      if (!this.keyCursor) this.keyCursor = { view: this.currentView, mm: this.crosshairMM() }  // else where it was left
      if (!this.toCanvas(this.keyCursor.mm, this.currentView)) {  // the view last used is not shown (M since)
        this.keyCursor.view = VIEW_OF[this.nv.screenSlices[0]?.axCorSag as number] ?? this.currentView
      }
      this.stage.focus({ preventScroll: true })
      this.showStatus('Keyboard cursor: the arrows move it (shift: faster), Enter clicks there (shift+Enter: a negative ' +
        'point), C marks a box\'s corner and C again draws the box, ' + (this.three ? 'T takes it to the next view, ' : '') +
        'Esc or K hides it.')
    }
    this.drawOverlay()
  },

  /** The cursor is drawn and its keys act while the image has the focus (a Tab or a click there). */
  keyCursorShown(this: Viewer): boolean {
    return this.keyCursor !== null && document.activeElement === this.stage
  },

  /** A place's point on the shown slice of its view, moved onto it when the slice was paged since. */
  shownMM(this: Viewer, m: KeyMark): number[] {
    const mm = [...m.mm]
    const axis = AXIS_OF[m.view]
    mm[axis] = this.crosshairMM()[axis]
    return mm
  },

  /** A place on the shown slice of its view (canvas pixels). */
  onShownSlice(this: Viewer, m: KeyMark): [number, number] | null {
    return this.toCanvas(this.shownMM(m), m.view)
  },

  /** An arrow, Enter, C or Esc for the cursor; false for a key it does not take (the other shortcuts then act). */
  keyCursorKey(this: Viewer, e: KeyboardEvent): boolean {
    const c = this.keyCursor
    if (!c || !this.keyCursorShown() || e.ctrlKey || e.metaKey || e.altKey) return false
    const k = e.key
    if (k === 'Escape') {
      if (this.drag) return false  // a mouse drag under way: Esc cancels it, as before
      if (this.keyMark) { this.keyMark = null; this.showStatus('Box corner dropped.') }
      else { this.keyCursor = null; this.showStatus('Keyboard cursor off.') }
      this.drawOverlay()
      return true
    }
    const at = this.onShownSlice(c) ?? this.toCanvas(this.crosshairMM(), this.currentView)
    if (!at) return false
    if (STEP[k]) {
      const n = Math.max(1, this.voxelCss(at[0], at[1])) * (e.shiftKey ? FAST : 1)
      const hit = this.pick(at[0] + STEP[k][0] * n, at[1] + STEP[k][1] * n)
      const on = this.pick(at[0], at[1])
      if (on) this.keyCursor = { view: on.view, mm: on.mm }
      if (hit && on && hit.view === on.view) this.keyCursor = { view: hit.view, mm: hit.mm }  // at the edge: stays
      this.drawOverlay()
      return true
    }
    if (k === 't' || k === 'T') { this.keyCursorToNextView(); return true }
    if (k !== 'Enter' && k !== 'c' && k !== 'C') return false
    if (e.repeat || this.drag) return true  // held: one click or corner, as a toggle key acts once
    if (k === 'Enter') {
      this.asMouse('mousedown', this.clientXY(at), e.shiftKey)
      this.asMouse('mouseup', this.clientXY(at), e.shiftKey)
    } else if (!this.keyMark) {
      const on = this.pick(at[0], at[1])
      if (on) this.keyMark = { view: on.view, mm: on.mm }
      this.showStatus(on ? 'Box corner marked: move to the opposite corner and press C again (Esc drops it).'
        : 'Box corner: move the cursor onto the image first.')
    } else {
      const mark = this.keyMark, first = this.onShownSlice(mark)
      this.keyMark = null
      if (!first) this.sayBoxCancelled('its first corner is not on the slice shown')
      else if (this.tool === 'point' || this.tool === 'box') this.keyBox(mark, first, at)
      else {  // a drag from the first corner to the cursor, as the mouse makes it (a stroke in Brush)
        this.asMouse('mousedown', this.clientXY(first))
        this.asMouse('mousemove', this.clientXY(at))
        this.asMouse('mouseup', this.clientXY(at))
      }
    }
    this.drawOverlay()
    return true
  },

  /** T: the cursor onto the next view's tile (three views), at the same point of the study: that view is paged to
   * it. The arrows stop at a tile's edge, so the keyboard alone could not reach another view. */
  keyCursorToNextView(this: Viewer): void {
    const c = this.keyCursor!
    const views = [...new Set(this.nv.screenSlices.map((s) => VIEW_OF[s.axCorSag as number]).filter(Boolean))]
    if (views.length < 2) {
      this.showStatus('T takes the keyboard cursor to the next view when three are shown (M).')
      return
    }
    const view = views[(views.indexOf(c.view) + 1) % views.length]
    const mm = this.shownMM(c)
    this.moveTo(mm, view)
    this.keyCursor = { view, mm }
    this.currentView = view  // as a press there sets it: ↑/↓ and PgUp/PgDn page it
    this.afterNavigate()
    this.showStatus(`Keyboard cursor on the ${view} view` + (this.keyMark ? ' (the box corner marked is dropped).' : '.'))
    this.keyMark = null
    this.drawOverlay()
  },

  /** C, C in Point or Box: the box between the two corners' points, however small. Sent as the mouse's drag it
   * was a click under DRAG_PX (C, one arrow, C: `Positive click (1 point)`), and the browser's whole-pixel mouse
   * coordinates could make a box a pixel of the study wide flat. On one spot it is cancelled. */
  keyBox(this: Viewer, mark: KeyMark, first: [number, number], at: [number, number]): void {
    const half = this.voxelCss(at[0], at[1]) / 2
    const end = this.pick(at[0], at[1])
    if (Math.abs(first[0] - at[0]) < half && Math.abs(first[1] - at[1]) < half) {
      this.sayBoxCancelled('its two corners are one point (C twice without moving the cursor)')
    } else if (!end || end.view !== mark.view) this.sayBoxCancelled('its corners are in two views')
    else { this.currentView = mark.view; this.sendBox(mark.view, this.shownMM(mark), end.mm) }  // as a press sets it
  },

  /** The window's pixel of a canvas point (the page may be zoomed by CSS: canvasXY's inverse). */
  clientXY(this: Viewer, [x, y]: [number, number]): [number, number] {
    const r = this.canvas.getBoundingClientRect()
    const kx = this.canvas.clientWidth ? r.width / this.canvas.clientWidth : 1
    const ky = this.canvas.clientHeight ? r.height / this.canvas.clientHeight : 1
    return [r.left + x * kx, r.top + y * ky]
  },

  /** The cursor (a ring with a cross, dark-edged to show on bone and air alike) and a marked corner with the box
   * it would make. */
  drawKeyCursor(this: Viewer, g: CanvasRenderingContext2D): void {
    if (!this.keyCursor || !this.keyCursorShown()) return
    const at = this.onShownSlice(this.keyCursor)
    if (!at) return
    const mark = this.keyMark ? this.onShownSlice(this.keyMark) : null
    for (const [colour, width] of [['rgba(0,0,0,0.8)', 4], ['#00e5ff', 2]] as [string, number][]) {
      g.strokeStyle = colour; g.lineWidth = width
      g.beginPath(); g.arc(at[0], at[1], 9, 0, 2 * Math.PI); g.stroke()
      g.beginPath()
      for (const [dx, dy] of [[1, 0], [-1, 0], [0, 1], [0, -1]]) {
        g.moveTo(at[0] + dx * 4, at[1] + dy * 4); g.lineTo(at[0] + dx * 15, at[1] + dy * 15)
      }
      g.stroke()
      if (mark) {
        g.strokeRect(mark[0] - 4, mark[1] - 4, 8, 8)
        g.setLineDash([6, 4]); g.strokeRect(mark[0], mark[1], at[0] - mark[0], at[1] - mark[1]); g.setLineDash([])
      }
    }
  },
}

export type KeyCursorMethods = typeof keyCursorMethods
