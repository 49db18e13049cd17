// Tools and what a drag becomes: the tool chosen (mid-drag too), a stroke cut at the image's edge, a box's first corner,
// and a press made before a study is shown.
import type { Viewer } from './viewer'
import type { Drag, Tool } from './types'

export const DRAG_PX = 4 // a press that moves less than this is a click, not a box

// a tool as its button names it (panel.ts)
const TOOL_NAME: Record<Tool, string> = { point: 'Point', box: 'Box', brush: 'Brush', erase: 'Eraser', navigate: 'Navigate' }

export const gestureMethods = {
  setTool(this: Viewer, tool: Tool): void {
    if (this.drag) this.toolDuringDrag(tool)
    this.tool = tool
    this.root.setAttribute('data-tool', tool)
    this.root.querySelectorAll('.mv-tool').forEach((b) => b.classList.toggle('mv-on', (b as HTMLElement).dataset.tool === tool))
    this.stage.style.cursor = { point: 'pointer', box: 'crosshair', brush: 'none', erase: 'none', navigate: 'default' }[tool]
    this.drawOverlay()
  },

  /** A tool's key pressed while the mouse is still down (a hurried user painting presses E to erase next): the
   * stroke drawn so far was dropped without a word, its path shown and nothing painted. A brush or eraser stroke is
   * now sent as it is, with the tool it was drawn with (the rest of the drag paints nothing); a box goes on when the
   * new tool draws boxes too (Point, Box), else it is cancelled in one line. */
  toolDuringDrag(this: Viewer, next: Tool): void {
    const d = this.drag!
    if (next === this.tool) return
    if (this.tool === 'brush' || this.tool === 'erase') {
      this.drag = null
      this.sendStroke(d)
    } else if (next !== 'point' && next !== 'box') {
      this.drag = null
      this.sayBoxCancelled(`the tool changed to ${TOOL_NAME[next]} during the drag`)
    }
  },

  /** A box the viewer had to drop (not Esc: the user knows then) is said in one wording, whatever the reason: two
   * wordings said it ("Box cancelled: ..." as a plain line, "box cancelled: ..." as a warning), and the plain one
   * was replaced by the next late message while the user still looked for the box. */
  sayBoxCancelled(this: Viewer, why: string): void {
    this.showError(`box cancelled: ${why}; nothing was placed, drag it again`)
  },

  /** A box dragged (or drawn by the keyboard cursor's C, C) from a corner to the opposite one, sent as a prompt; one
   * whose corners lie on one row or column of the image (a straight line dragged, a corner moved by ← or → alone) is
   * cancelled in the viewer's words: the server refused it as `box 104.227 127.355 150.773 127.355 has no area: a box
   * needs x0 < x1 and y0 < y1`, the model's wording for a scripted client. */
  sendBox(this: Viewer, view: string, mm: number[], mm2: number[]): void {
    const a = this.toCanvas(mm, view), b = this.toCanvas(mm2, view)
    const voxel = a && b ? this.voxelCss((a[0] + b[0]) / 2, (a[1] + b[1]) / 2) : 0
    if (a && b && Math.min(Math.abs(a[0] - b[0]), Math.abs(a[1] - b[1])) < 0.99 * voxel) {  // float: a keyboard box 1 voxel high is 0.99999
      this.sayBoxCancelled('its corners are on one row or column of the image (a line, not a box)')
      return
    }
    this.prompt({ kind: 'box', view, mm, mm2, new_object: true }, { kind: 'box', view, mm: [mm, mm2] })
  },

  /** A study opened (its page state came) while a box, stroke or click was being made on the one shown: its
   * millimetres belong to the study left, and its release threw on the emptied viewer, so it was lost without a
   * word. It is dropped now, in one line naming the study that opened. */
  dropDragForStudy(this: Viewer, name: string): void {
    const d = this.drag
    if (!d) return
    this.drag = null
    if (this.tool === 'brush' || this.tool === 'erase') {
      this.showError(`stroke cancelled: ${name} opened while it was being drawn; nothing was painted, paint it again`)
    } else if (Math.hypot(d.x - d.x0, d.y - d.y0) >= DRAG_PX && this.tool !== 'navigate') {
      this.sayBoxCancelled(`${name} opened while this box was being drawn`)
    } else this.showError(`your click was not placed: ${name} opened before it was released; click again`)
    this.drawOverlay()
  },

  /** A brush or eraser stroke's pieces (one per stretch inside the image), each one undoable edit. */
  sendStroke(this: Viewer, d: Drag): void {
    for (const piece of [...d.done, d.stroke].filter((p) => p.length)) {
      this.prompt({ kind: this.tool, view: d.view, points: piece, radius: this.brushPx / 2 },
        { kind: 'stroke', view: d.view, mm: piece })
    }
  },

  /** The slice changed under a brush or eraser stroke (↑/↓ or the wheel, the mouse still down): the part drawn so far
   * is sent now, on its own slice, and the stroke goes on as a new one on the slice shown. Sent whole, the server
   * painted all of it on its first point's slice: the part drawn after the paging went to the slice left. */
  cutStrokeAtSlice(this: Viewer): void {
    const d = this.drag
    if (!d || (this.tool !== 'brush' && this.tool !== 'erase')) return
    const piece = d.stroke.length ? d.stroke : d.done[d.done.length - 1] ?? []
    const last = piece[piece.length - 1]
    if (!last || this.toCanvas(last, d.view)) return  // nothing drawn yet, or still on the slice shown
    this.sendStroke(d)
    const hit = this.pick(d.x, d.y)
    const on = hit !== null && hit.view === d.view
    this.drag = { ...d, x0: d.x, y0: d.y, mm0: [], stroke: on ? [hit.mm] : [], done: [], out: !on, last: [d.x, d.y],
      outAt: [d.x, d.y] }
  },

  /** The screen's mapping changed under a brush or eraser stroke (M, a zoom key, ctrl+wheel, the mouse still down):
   * the mouse now stands over another point of the image than the last one drawn, and the stroke joined the two
   * with a straight band where the brush never went. The piece drawn so far ends there; the stroke goes on from the
   * next point, each piece one undoable edit. */
  breakStroke(this: Viewer): void {
    const d = this.drag
    if (!d || (this.tool !== 'brush' && this.tool !== 'erase') || !d.stroke.length) return
    d.done.push(d.stroke)
    d.stroke = []
  },

  /** Where the canvas lies on the page now (its top-left corner, CSS pixels), noted at a press and checked at each
   * move of a brush or eraser stroke: the page's layout moved the image without resizing it (a line above it
   * wrapping, a notice shown, the page scrolled), and the stroke joined its last point to the next with a band where
   * the brush never went, as a resize did (that one the stage's ResizeObserver cuts). Cut there too (breakStroke). */
  noteCanvasPlace(this: Viewer): void {
    const r = this.canvas.getBoundingClientRect()
    const at = `${r.left},${r.top}`
    if (at !== this.canvasAt) this.breakStroke()
    this.canvasAt = at
  },

  /** The brush size changed under a brush or eraser stroke (``[``/``]`` or the size box, the mouse still down): the
   * stroke is sent with one radius, so the new size applied to the whole of it, the part drawn before too. The part
   * drawn so far is sent now, with the size it was drawn with; the stroke goes on from its last point (no gap) with
   * the new size. A stroke of its press alone takes the new size whole. Call before the size changes. */
  cutStrokeAtSize(this: Viewer): void {
    const d = this.drag
    if (!d || (this.tool !== 'brush' && this.tool !== 'erase')) return
    if (d.done.reduce((n, p) => n + p.length, d.stroke.length) <= 1) return
    const last = d.stroke[d.stroke.length - 1]
    this.sendStroke(d)
    this.drag = { ...d, done: [], stroke: last && !d.out ? [last] : [] }
  },

  setBrush(this: Viewer, px: number): void {
    const size = Math.max(1, Math.min(100, Math.round(px) || 1))
    if (size !== this.brushPx) this.cutStrokeAtSize()
    this.brushPx = size
    const input = this.root.querySelector('#brush-size') as HTMLInputElement | null
    if (input) input.value = String(this.brushPx)
    this.drawOverlay()
  },

  /** A brush stroke's next mouse position. Leaving the image ends the piece at the edge; coming back starts
   * another piece at the edge. The stroke was one polyline of its inside points, so leaving on one side and
   * coming back on another painted a straight line across the image where the brush never went. */
  extendStroke(this: Viewer, d: Drag, x: number, y: number): void {
    const hit = this.pick(x, y)
    if (hit && !d.mm0.length && !d.stroke.length && !d.done.length) d.view = hit.view  // begun off every image
    if (hit && hit.view === d.view) {
      if (d.out) {
        if (d.stroke.length) d.done.push(d.stroke)
        const edge = this.edgeBetween(x, y, d.outAt[0], d.outAt[1], d.view)
        d.stroke = edge ? [edge.mm] : []
        d.out = false
      }
      d.stroke.push(hit.mm)
      d.last = [x, y]
      return
    }
    if (!d.out) {
      const edge = this.edgeBetween(d.last[0], d.last[1], x, y, d.view)
      if (edge) d.stroke.push(edge.mm)
      d.out = true
    }
    d.outAt = [x, y]
  },

  /** Where the box being dragged begins on the screen now: its first corner's millimetres through the current
   * mapping, not the screen point pressed. M (the layout), a zoom or the wheel during the drag move that corner (or
   * take its slice off the screen: null), and the dashed box stayed at the old point while the release made a box
   * from the corner first pressed; released over another view, it was clamped from that stale point. A box begun
   * beside the image has no corner yet: the point pressed. */
  boxStart(this: Viewer, d: Drag): [number, number] | null {
    return d.mm0.length ? this.toCanvas(d.mm0, d.view) : [d.x0, d.y0]
  },

  /** A press on the stage while no study is shown (none open, or one still on its way into the viewer): there is
   * nothing to place it on, and before it was dropped without a word (the line kept saying "Loading ...", the user
   * waited for a mask that never came). One line says so; a study's own line replaces it once it is shown. */
  sayUnplaced(this: Viewer, moved: boolean, button: number): void {
    const painting = this.tool === 'brush' || this.tool === 'erase'
    const what = button === 2 ? 'window drag' : painting ? 'stroke' : moved && this.tool !== 'navigate' ? 'box' : 'click'
    if (!this.loading && !this.state?.study) {
      this.showStatus('No study is open: open a sample or upload a study, then click on it.')
      return
    }
    const again = what === 'click' ? 'click' : 'do it'
    if (!this.loading && this.nv.volumes.length) {  // shown between the press and the release
      this.showError(`your ${what} began while ${this.state?.name ?? 'The study'} was still loading and was not placed: ${again} again.`)
      return
    }
    this.sayNotShown(what, 'placed', again)
  },

  /** A press or key (``what``) that needs the image while none is shown: its study still loading, or its load failed
   * (said then). One honest line, which the study's own replaces once it is shown. */
  sayNotShown(this: Viewer, what: string, verb: 'placed' | 'applied', again: string): void {
    const name = this.state?.name ?? 'The study'
    if (!this.loading) {  // its load failed (said then): nothing is loading
      this.showError(`${name} is not in the viewer (its loading failed): open it again; your ${what} was not ${verb}.`)
      return
    }
    this.showError(`${name} is still loading: your ${what} was not ${verb}; ${again} again once it is shown.`)
    this.loadRefusal = this.statusSeq
  },
}

export type GestureMethods = typeof gestureMethods
