// Wheel paging: how many slices a wheel event turns, from its delta rather than one per event.
//
// Why: NiiVue (as Cornerstone3D's StackScrollTool) pages one slice per wheel event, whatever its size. A touchpad's
// gentle swipe is many events of a few pixels (ten of 3 px went through 10 slices), and the events Chromium merges
// while a frame is busy (their deltas summed) paged one slice for several notches.
//
// The facts this follows (no code taken): a mouse notch is deltaY 100 px in Chromium on Windows and Linux (120 on some
// set-ups, 132 in Firefox on Linux), only a few px in Chromium on macOS, but its legacy wheelDeltaY is 120 (240 on
// macOS) on every platform, against a few units for a touchpad's small steps (dwv's getSpinY notes: a notch is
// |wheelDeltaY| above ~45); Firefox may send line units (deltaMode 1, 3 lines a notch) and page units (2), which
// normalizers (Facebook's normalizeWheel, Cornerstone3D's copy of it) scale by a nominal line or page height.
// Here a line or page event turns one slice per notch, a notch-sized pixel event one slice per 100 px (at least one:
// a macOS notch), and small pixel deltas are summed, one slice per PRECISE_PX.

/** A mouse notch in pixel mode (Chromium/Edge on Windows and Linux): summed notches page one slice each. */
export const NOTCH_PX = 100
/** A touchpad's small deltas, summed: one slice per this many pixels. */
export const PRECISE_PX = 50
/** |wheelDeltaY| (or |deltaY| where the browser gives none) from which an event is a notch, not a touchpad step. */
const NOTCH_LEGACY = 45
/** Lines in a notch (Firefox's line mode; the system's default of 3). */
const LINES_PER_NOTCH = 3
/** A pause after which a touchpad's leftover delta is forgotten: the next gesture starts afresh. */
const GESTURE_GAP_MS = 400

/** The zoom of one notch (ctrl+wheel); a touchpad's pinch (ctrl+wheel of small deltas) zooms by its delta. */
export const ZOOM_NOTCH = 1.15

export class WheelPager {
  private sum = 0
  private last = -Infinity

  /** The notches ``e`` holds (signed as deltaY), or null for a touchpad's small step (its pixels count). */
  notches(e: WheelEvent): number | null {
    const dy = e.deltaY
    const sign = Math.sign(dy)
    if (e.deltaMode === WheelEvent.DOM_DELTA_LINE || e.deltaMode === WheelEvent.DOM_DELTA_PAGE) {
      const per = e.deltaMode === WheelEvent.DOM_DELTA_LINE ? LINES_PER_NOTCH : 1
      return sign * Math.max(1, Math.round(Math.abs(dy) / per))
    }
    const legacy = (e as any).wheelDeltaY
    const size = typeof legacy === 'number' && legacy !== 0 ? Math.abs(legacy) : Math.abs(dy)
    return size > NOTCH_LEGACY ? sign * Math.max(1, Math.round(Math.abs(dy) / NOTCH_PX)) : null
  }

  /** The slices ``e`` turns (signed as deltaY: positive down), 0 while a touchpad's small deltas add up. */
  steps(e: WheelEvent): number {
    const dy = e.deltaY
    const gap = e.timeStamp - this.last > GESTURE_GAP_MS
    this.last = e.timeStamp
    if (!dy) return 0
    const notches = this.notches(e)
    if (notches !== null) { this.sum = 0; return notches }
    if (gap || Math.sign(this.sum) === -Math.sign(dy)) this.sum = 0  // a new gesture, or the swipe turned back
    this.sum += dy
    const n = Math.trunc(this.sum / PRECISE_PX)
    this.sum -= n * PRECISE_PX
    return n
  }

  /** The zoom factor of a ctrl+wheel event: ZOOM_NOTCH per notch in, its inverse out; a pinch's small deltas (Chromium
   * sends a touchpad pinch as ctrl+wheel) by their size, a notch's worth per NOTCH_PX. One step per event zoomed a
   * pinch of 20 small events 16-fold (the clamp's 20x in a moment). */
  zoomFactor(e: WheelEvent): number {
    if (!e.deltaY) return 1
    const notches = this.notches(e)
    return notches !== null ? ZOOM_NOTCH ** -notches : Math.exp(-e.deltaY * Math.log(ZOOM_NOTCH) / NOTCH_PX)
  }
}
