// Mouse input on the image: presses, moves and releases become clicks, boxes, strokes and window drags.
import type { Viewer } from './viewer'
import { DRAG_PX } from './gestures'
import { AXIS_OF } from './geometry'

export const pointerMethods = {
  /** The stage's and window's mouse listeners, in capture: they run before NiiVue's own (which would move the
   * crosshair or window the image). */
  bindPointer(this: Viewer): void {
    const stage = this.stage
    stage.addEventListener('mousedown', (e) => this.onPress(e), true)
    window.addEventListener('mousemove', (e) => this.onMove(e), true)
    window.addEventListener('mouseup', (e) => this.onRelease(e), true)
    stage.addEventListener('wheel', (e) => this.onWheel(e), { capture: true, passive: false })
    stage.addEventListener('contextmenu', (e) => e.preventDefault())
    stage.addEventListener('mouseup', (e) => {
      if (e.button === 0 && this.tool === 'navigate') window.setTimeout(() => this.afterNavigate(), 0)
    })
  },

  /** A button pressed on the stage: a window drag (right), a box or stroke begun (left), or one to say no study takes. */
  onPress(this: Viewer, e: MouseEvent): void {
    const stage = this.stage
    const editing = () => this.tool !== 'navigate'
    stage.focus({ preventScroll: true })
    this.releaseLost(e, e.button)
    if ((e.button === 0 || e.button === 2) && (this.loading || !this.nv.volumes.length)) {
      // nothing shown to place it on: said at the release (a click, a box, a stroke or a window drag)
      e.stopPropagation(); e.preventDefault()
      this.unplaced = { x: e.clientX, y: e.clientY, button: e.button }
      return
    }
    const [x, y] = this.canvasXY(e)
    this.noteCanvasPlace()
    const hit = this.pick(x, y)
    if (hit) { this.currentView = hit.view }
    if (e.button === 2 && hit && this.state?.study && !this.state.rgb) { // window/level drag, ours
      e.stopPropagation(); e.preventDefault()
      const vol = this.nv.volumes[0]
      this.wl = { x: e.clientX, y: e.clientY, level: (vol.cal_max! + vol.cal_min!) / 2, width: vol.cal_max! - vol.cal_min! }
      this.windowOwn = { level: this.wl.level, width: this.wl.width }
      return
    }
    const painting = this.tool === 'brush' || this.tool === 'erase'
    if (e.button === 0 && painting && !hit && this.state?.study && this.nv.volumes.length) {
      // a stroke begun off the image (its black band, another view's letterbox) paints from where it enters, as a
      // stroke that leaves and comes back does; before, it painted nothing and dragged a text selection instead
      e.stopPropagation(); e.preventDefault()
      this.drag = { x0: x, y0: y, x, y, view: this.currentView, mm0: [], stroke: [], button: 0, done: [], out: true,
        last: [x, y], outAt: [x, y] }
      return
    }
    if (e.button === 0 && (this.tool === 'box' || this.tool === 'point') && !hit && this.state?.study &&
        this.nv.volumes.length) {
      // a box begun off the image (in the letterbox beside it, to get a corner right at the edge) starts at the
      // image's edge on its way to where it is released; before, nothing happened and nothing was said
      e.stopPropagation(); e.preventDefault()
      this.drag = { x0: x, y0: y, x, y, view: '', mm0: [], stroke: [], button: 0, done: [], out: true,
        last: [x, y], outAt: [x, y] }
      return
    }
    if (e.button !== 0 || !editing() || !hit || !this.state?.study) return
    e.stopPropagation(); e.preventDefault()
    this.drag = { x0: x, y0: y, x, y, view: hit.view, mm0: hit.mm, stroke: [hit.mm], button: 0, done: [], out: false,
      last: [x, y], outAt: [x, y] }
    this.drawOverlay()
  },

  /** The mouse moved anywhere on the page: the window drag, box or stroke under way follows it; the brush ring too. */
  onMove(this: Viewer, e: MouseEvent): void {
    const stage = this.stage
    this.releaseLost(e)
    const [x, y] = this.canvasXY(e)
    const inside = e.target === this.canvas || e.target === this.overlay || stage.contains(e.target as Node)
    this.hover = inside ? [x, y] : null
    if (this.wl) { // right-drag: horizontal = width, vertical = level (as radiology viewers do)
      e.stopPropagation(); e.preventDefault()
      const k = Math.max(this.wl.width, 1) / 300
      const width = Math.max(1, this.wl.width + (e.clientX - this.wl.x) * k)
      const level = this.wl.level - (e.clientY - this.wl.y) * k
      this.windowOwn = { level, width }
      this.applyWindow({ level, width })
      this.showInfo()
      return
    }
    if (!this.drag) { if (this.tool === 'brush' || this.tool === 'erase') this.drawOverlay(); return }
    e.stopPropagation(); e.preventDefault()
    this.drag.x = x; this.drag.y = y
    if (this.tool === 'brush' || this.tool === 'erase') {
      this.noteCanvasPlace()  // moved on the page since the last point: the stroke cut there
      this.extendStroke(this.drag, x, y)
    }
    this.drawOverlay()
  },

  /** A drag whose button is no longer held, though its release never came: let go where the page could not see it
   * (over a remote desktop's edge, after alt+tab, under a dialog). The stroke went on painting where the mouse merely
   * hovered, the next press dropped the whole stroke without a word, and a window drag followed the mouse with no
   * button down. Ended now as that release would have ended it, where the button was last seen held: a stroke is
   * sent as drawn, a window kept; a box, whose corner is not known, is cancelled in one line. */
  releaseLost(this: Viewer, e: MouseEvent, pressed = -1): void {
    // a press of the drag's own button is a new drag: the old one's release was lost (``buttons`` holds the new press)
    if (this.wl && (!(e.buttons & 2) || pressed === 2)) {
      this.wl = null
      this.onWindowDragged()
    }
    const d = this.drag
    if (!d || (e.buttons & 1 && pressed !== 0)) return
    if (this.tool !== 'brush' && this.tool !== 'erase' && Math.hypot(d.x - d.x0, d.y - d.y0) >= DRAG_PX) {
      this.drag = null
      this.sayBoxCancelled('the mouse button was let go where the page could not see it')
      this.drawOverlay()
      return
    }
    this.onRelease(new MouseEvent('mouseup', { button: 0, shiftKey: e.shiftKey }))
  },

  /** A button released anywhere on the page: the drag under way becomes its prompt (or the reason it has none). */
  onRelease(this: Viewer, e: MouseEvent): void {
    const unplaced = this.unplaced
    if (unplaced && e.button === unplaced.button) {
      e.stopPropagation(); e.preventDefault()
      this.unplaced = null
      this.sayUnplaced(Math.hypot(e.clientX - unplaced.x, e.clientY - unplaced.y) >= DRAG_PX, e.button)
      return
    }
    if (this.wl && e.button === 2) {
      e.stopPropagation(); e.preventDefault()
      this.wl = null
      this.onWindowDragged()
      return
    }
    if (!this.drag || e.button !== 0) return
    e.stopPropagation(); e.preventDefault()
    const d = this.drag
    this.drag = null
    const moved = Math.hypot(d.x - d.x0, d.y - d.y0) >= DRAG_PX
    if (this.tool === 'brush' || this.tool === 'erase') {
      this.sendStroke(d)
    } else if (moved && !d.mm0.length) {  // begun off the image: from its edge, in the view where it is released
      const hit = this.pick(d.x, d.y)
      const start = hit ? this.pickClamped(d.x0, d.y0, d.x, d.y, hit.view) : null
      if (hit && start) this.sendBox(hit.view, start.mm, hit.mm)
      else this.showError('the box could not be placed on the image: release it over the image')
    } else if (!d.mm0.length) {  // a click beside the image
      this.showStatus(this.tool === 'point' ? 'Point: click on the image.' : 'Box: drag from one corner to the opposite one, over the image.')
    } else if (moved) {
      const first = this.boxStart(d)
      const hit = this.pick(d.x, d.y)  // released in another view's tile (3 views) or off the image: its edge
      const end = !first ? null
        : hit && hit.view === d.view ? hit : this.pickClamped(d.x, d.y, first[0], first[1], d.view)
      if (!first) this.sayBoxCancelled('its first corner left the screen during the drag (another slice or view)')
      else if (end) this.sendBox(d.view, d.mm0, end.mm)
      else this.showError('the box could not be placed on the image: drag it again')
    } else if (this.tool === 'point' && e.detail >= 2 && this.lastPositive === !(e.shiftKey || this.negative)) {
      // a double-click's second press (the browser counts it so only on the same spot): one click. It was a second
      // point on the first, "(2 points)", and one undo left the mask of the first. The other kind there (shift held
      // for the second) is a point of its own
    } else if (this.tool === 'point') {
      const positive = !(e.shiftKey || this.negative)
      this.lastPositive = positive
      const body: any = { kind: 'point', view: d.view, mm: d.mm0, positive }
      if (this.newObject) { body.new_object = true; this.newObject = false }
      this.prompt(body, { kind: 'point', view: d.view, mm: [d.mm0], positive })
    } else {
      this.showStatus('Box: drag from one corner to the opposite one.')
    }
    this.drawOverlay()
  },

  /** ctrl/alt+wheel zooms; the plain wheel pages the slice under the mouse, by its delta (WheelPager). */
  onWheel(this: Viewer, e: WheelEvent): void {
    if (this.state?.study && (this.loading || !this.nv.volumes.length)) {  // as a key is then (keyboard.ts IMAGE_KEYS)
      e.preventDefault(); e.stopPropagation()
      const zoom = e.ctrlKey || e.metaKey || e.altKey
      this.sayNotShown(zoom ? 'zoom (ctrl+wheel)' : 'slice scroll (wheel)', 'applied', 'scroll')
      return
    }
    const [x, y] = this.canvasXY(e)
    const hit = this.pick(x, y)
    if (hit) this.currentView = hit.view
    if (e.ctrlKey || e.metaKey || e.altKey) {
      e.preventDefault(); e.stopPropagation()
      this.zoom(this.wheel.zoomFactor(e))  // by the delta: a pinch's many small events zoom a little each
      this.showInfo()
      return
    }
    // the slice under the mouse is paged here, by the event's delta (wheel.ts), not by NiiVue's one slice an event
    e.preventDefault(); e.stopPropagation()
    const n = this.wheel.steps(e)
    if (!n || !hit) return
    this.pageSlices(hit.view, n)
  },

  /** ``n`` slices along ``view``'s axis (the wheel's, a two-finger swipe's): NiiVue's direction, the wheel down
   * (deltaY > 0) one voxel up the view's axis. */
  pageSlices(this: Viewer, view: string, n: number): void {
    const d = [0, 0, 0]
    d[AXIS_OF[view]] = n
    this.nv.moveCrosshairInVox(d[0], d[1], d[2])
    this.afterNavigate()
  },
}

export type PointerMethods = typeof pointerMethods
