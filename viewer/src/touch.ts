// A finger on the image (a tablet at the bedside): one finger does what the mouse's left button does, two fingers
// pinch to zoom or swipe to page the slices.
import type { Viewer } from './viewer'
import { DRAG_PX } from './gestures'

// two fingers moving this far (CSS px) decide the gesture: a pinch (their distance changed most) or a swipe
const DECIDE_PX = 12
// a two-finger swipe pages one slice per this many CSS px of its midpoint's vertical move
const SWIPE_PX = 30

export type TouchGesture = {
  fingers: 1 | 2
  at: [number, number]  // one finger: where it is; two: their midpoint
  dist: number  // two fingers: their distance at the last zoom step
  start: [number, number, number]  // two fingers: midpoint x, y and distance when the second touched
  kind: 'pinch' | 'swipe' | null
  swiped: number  // a swipe's vertical move not yet paged (px)
}

function fingerPoints(e: TouchEvent): [number, number][] {
  return Array.from(e.touches).slice(0, 2).map((t) => [t.clientX, t.clientY] as [number, number])
}

export const touchMethods = {
  /** The stage's touch listeners, in capture: a touch is stopped before NiiVue's own handlers and the browser's
   * (no page scroll or zoom, no mouse events made up from a tap). Before, a tap placed no point, a finger's drag drew
   * no box or stroke (NiiVue moved its crosshair instead), and a pinch paged the slices (to the first) without a word. */
  bindTouch(this: Viewer): void {
    const opts = { capture: true, passive: false }
    this.stage.addEventListener('touchstart', (e) => this.onTouch(e), opts)
    this.stage.addEventListener('touchmove', (e) => this.onTouch(e), opts)
    this.stage.addEventListener('touchend', (e) => this.onTouch(e), opts)
    this.stage.addEventListener('touchcancel', (e) => this.onTouch(e), opts)
  },

  onTouch(this: Viewer, e: TouchEvent): void {
    e.preventDefault(); e.stopPropagation()
    const pts = fingerPoints(e)
    const g = this.touch
    if (e.type === 'touchstart' && !g && pts.length === 1) {
      this.touch = { fingers: 1, at: pts[0], dist: 0, start: [0, 0, 0], kind: null, swiped: 0 }
      this.asMouse('mousedown', pts[0])
    } else if (e.type === 'touchstart' && pts.length >= 2 && g?.fingers !== 2) {
      if (g) this.endOneFinger(g)
      const mid = midpoint(pts)
      const dist = spread(pts)
      this.touch = { fingers: 2, at: mid, dist, start: [mid[0], mid[1], dist], kind: null, swiped: 0 }
    } else if (e.type === 'touchmove' && g?.fingers === 1 && pts.length) {
      g.at = pts[0]
      this.asMouse('mousemove', pts[0])
    } else if (e.type === 'touchmove' && g?.fingers === 2 && pts.length >= 2) {
      this.twoFingers(g, pts)
    } else if ((e.type === 'touchend' || e.type === 'touchcancel') && !pts.length && g) {
      this.touch = null
      if (g.fingers === 1) this.asMouse('mouseup', g.at)
      else if (g.kind) this.afterNavigate()
    }
  },

  /** The first finger of a two-finger gesture: a press that had not moved yet was that gesture's start and is
   * dropped; a stroke or box under way ends where the finger is, as its release would. */
  endOneFinger(this: Viewer, g: TouchGesture): void {
    const d = this.drag
    if (this.unplaced || (d && Math.hypot(d.x - d.x0, d.y - d.y0) < DRAG_PX)) {
      this.unplaced = null
      this.drag = null
      this.drawOverlay()
    }
    this.asMouse('mouseup', g.at)  // NiiVue's own drag (Navigate) ends too
  },

  /** Two fingers moved: once they have moved DECIDE_PX, a pinch (their distance changed most) zooms by its ratio,
   * a swipe pages the slice under them, one slice per SWIPE_PX (fingers going up go down the stack, as a wheel
   * turned down does). */
  twoFingers(this: Viewer, g: TouchGesture, pts: [number, number][]): void {
    const mid = midpoint(pts)
    const dist = spread(pts)
    const [x, y] = this.canvasXY({ clientX: mid[0], clientY: mid[1] } as MouseEvent)
    const hit = this.pick(x, y)
    if (hit) this.currentView = hit.view
    if (!g.kind) {
      const pinch = Math.abs(dist - g.start[2])
      const swipe = Math.hypot(mid[0] - g.start[0], mid[1] - g.start[1])
      if (Math.max(pinch, swipe) < DECIDE_PX) return
      g.kind = pinch >= swipe ? 'pinch' : 'swipe'
      g.dist = g.start[2]
      g.at = [g.start[0], g.start[1]]
    }
    if (g.kind === 'pinch' && g.dist > 0) {
      this.zoom(dist / g.dist)
      g.dist = dist
    } else if (g.kind === 'swipe') {
      g.swiped += g.at[1] - mid[1]
      const n = Math.trunc(g.swiped / SWIPE_PX)
      g.swiped -= n * SWIPE_PX
      if (n && hit) this.pageSlices(hit.view, n)
    }
    g.at = mid
  },

  /** A finger's (or the keyboard cursor's) press, move or release as the mouse's left button's, sent to the canvas:
   * the viewer's own mouse handlers (and NiiVue's, for Navigate) take it as they take the mouse's. */
  asMouse(this: Viewer, type: string, [x, y]: [number, number], shiftKey = false): void {
    const buttons = type === 'mouseup' ? 0 : 1
    this.canvas.dispatchEvent(new MouseEvent(type, {
      clientX: x, clientY: y, button: 0, buttons, detail: 1, shiftKey, bubbles: true, cancelable: true, view: window }))
  },
}

function midpoint(pts: [number, number][]): [number, number] {
  return [(pts[0][0] + pts[1][0]) / 2, (pts[0][1] + pts[1][1]) / 2]
}

function spread(pts: [number, number][]): number {
  return Math.hypot(pts[0][0] - pts[1][0], pts[0][1] - pts[1][1])
}

export type TouchMethods = typeof touchMethods
