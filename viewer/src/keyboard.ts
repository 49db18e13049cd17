// Keyboard shortcuts on the page (the Shortcuts table lists them).
import type { Viewer } from './viewer'

export const SHORTCUTS: [string, string][] = [
  ['P / B / R / E / V', 'point, box, brush, eraser, navigate'],
  ['click', 'positive point (shift+click: negative)'],
  ['drag', 'box (in point and box modes)'],
  ['Esc', 'cancel a box being drawn'],
  ['K', 'keyboard cursor on / off (the image focused)'],
  ['arrows, shift+arrows', 'move the keyboard cursor (shift: 10 pixels)'],
  ['Enter / shift+Enter', 'click at the keyboard cursor (shift: negative)'],
  ['C, then C', 'box from the cursor\'s first corner to the second'],
  ['T', 'keyboard cursor to the next view (three views)'],
  ['N', 'new object'],
  ['wheel, ↑/↓, PgUp/PgDn', 'page slices'],
  ['ctrl+wheel, +/−, 0', 'zoom in / out / reset'],
  ['middle-drag', 'pan'],
  ['right-drag', 'window/level'],
  ['[ / ]', 'brush size'],
  ['O', 'outline / fill'],
  ['G', 'suggest where to click next (on / off)'],
  ['H', 'hide / show the active label'],
  ['M', 'one view / three views'],
  ['ctrl+Z / ctrl+Y (ctrl+shift+Z)', 'undo / redo'],
]

// The keys that act on the image shown, and how a message names them: pressed while none is shown (its load under
// way or failed) they did nothing, or were undone when it came (M, zoom), without a word.
const IMAGE_KEYS: Record<string, string> = {
  ArrowUp: 'slice step (↑)', ArrowDown: 'slice step (↓)', PageUp: 'slice step (PgUp)', PageDown: 'slice step (PgDn)',
  m: 'layout switch (M)', M: 'layout switch (M)', k: 'keyboard cursor (K)', K: 'keyboard cursor (K)', '+': 'zoom (+)', '=': 'zoom (+)', '-': 'zoom (−)', '0': 'zoom reset (0)',
}

// Keys that flip something or act once: held down, the key's repeats (30 a second after half a second) flipped it
// back and forth, so H, M or O held a moment too long ended hidden or shown, one view or three, by the count of
// repeats, and N held sent a new object per repeat. A held one acts once, as its first press.
const ONCE = new Set(['h', 'H', 'm', 'M', 'o', 'O', 'g', 'G', 'n', 'N', 'k', 'K', 't', 'T'])

// the input types whose keys edit text: ctrl+Z there is the field's own undo
const TEXT_INPUTS = new Set(['text', 'search', 'number', 'email', 'password', 'url', 'tel'])

// the keys a control without text acts on: the rest are the viewer's shortcuts
const ARROWS = ['ArrowUp', 'ArrowDown', 'ArrowLeft', 'ArrowRight']
const CONTROL_KEYS: Record<string, Set<string>> = {
  checkbox: new Set([' ']),
  radio: new Set([' ', ...ARROWS]),
  range: new Set([...ARROWS, 'PageUp', 'PageDown', 'Home', 'End']),
}

/** A field that takes the key pressed in it (text typed, a radio or slider moved by arrows): the viewer's shortcuts
 * leave it to it. A checkbox, radio or slider takes only its own keys: the focus stays on one after a click (the
 * toolbar's *negative* box, the opacity slider, the export format), and B, ↑ or R pressed next did nothing at all. */
function ownsKeys(t: HTMLElement, key: string): boolean {
  if (t.tagName === 'INPUT') return CONTROL_KEYS[(t as HTMLInputElement).type]?.has(key) ?? true
  return t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable
}

/** ctrl+Z/Y in a field with no text of its own to undo means the user's last edit of the labels: in the Active
 * label or Model box (a list: its text is the choice shown) it did nothing, no undo and no word, and the user went
 * on believing the last click undone; likewise on a checkbox, radio or slider. */
function undoIsTheViewers(t: HTMLElement): boolean {
  if (t.closest('#label, #model')) return true
  return t.tagName === 'INPUT' && !TEXT_INPUTS.has((t as HTMLInputElement).type)
}

export const keyboardMethods = {
  /** The window's keys, in capture: before NiiVue's and the page's own. */
  bindKeys(this: Viewer): void {
    window.addEventListener('keydown', (e) => this.onKey(e), true)
    // the keyboard cursor is drawn while the image has the focus: its keys act only then
    for (const type of ['focus', 'blur']) this.stage.addEventListener(type, () => this.drawOverlay())
  },

  onKey(this: Viewer, e: KeyboardEvent): void {
    const t = e.target as HTMLElement | null
    const k = e.key
    // AltGr (German, French, ... layouts type [ ] { } with it) comes as ctrl+alt on Windows: [ and ] were taken as
    // ctrl shortcuts and did nothing there. ctrl+alt is no shortcut of the viewer's: the key is read as typed
    const altGr = e.getModifierState?.('AltGraph') || (e.ctrlKey && e.altKey && !e.metaKey)
    const ctrl = (e.ctrlKey || e.metaKey) && !altGr
    const undoKey = ctrl && !e.altKey && (k.toLowerCase() === 'z' || k.toLowerCase() === 'y')
    if (t && ownsKeys(t, k) && !(undoKey && undoIsTheViewers(t))) return
    if (!this.state?.study) return
    if (undoKey && t?.closest('#label, #model')) (t as HTMLElement).blur()  // closes the list: the undo is the news
    // Enter on the image is the keyboard cursor's click (K), which the load dropped: said so, not silent. Enter on a
    // focused button or list is that control's own
    const enter = k === 'Enter' && t && this.stage.contains(t) ? (e.shiftKey ? 'shift+Enter' : 'Enter') : ''
    const needs = IMAGE_KEYS[k] ?? (enter && `${e.shiftKey ? 'negative click' : 'click'} (${enter})`)
    if (needs && !ctrl && (this.loading || !this.nv.volumes.length)) {
      e.preventDefault(); e.stopPropagation()
      if (enter) this.sayNotShown(needs, 'placed', `show the cursor (K) and press ${enter}`)
      else this.sayNotShown(needs, 'applied', 'press it')
      return
    }
    if (e.repeat && !ctrl && ONCE.has(k)) { e.preventDefault(); e.stopPropagation(); return }
    if (this.keyCursorKey(e)) { e.preventDefault(); e.stopPropagation(); return }  // the cursor's arrows, Enter, C
    let handled = true
    if (k === 'Escape') {
      if (this.drag) {
        const stroke = this.tool === 'brush' || this.tool === 'erase'
        this.drag = null; this.showStatus(stroke ? 'Stroke cancelled.' : 'Box cancelled.'); this.drawOverlay()
      } else handled = false
    } else if (ctrl && k.toLowerCase() === 'z' && e.shiftKey) this.history('redo', 'redo (ctrl+shift+Z)', e.repeat)  // the Mac's
    else if (ctrl && k.toLowerCase() === 'z') this.history('undo', 'undo (ctrl+Z)', e.repeat)
    else if (ctrl && k.toLowerCase() === 'y') this.history('redo', 'redo (ctrl+Y)', e.repeat)
    else if (ctrl) handled = false
    else if (k === 'ArrowUp' || k === 'PageUp') this.page(1)
    else if (k === 'ArrowDown' || k === 'PageDown') this.page(-1)
    else if (k === 'p' || k === 'P') this.setTool('point')
    else if (k === 'b' || k === 'B') this.setTool('box')
    else if (k === 'r' || k === 'R') this.setTool('brush')
    else if (k === 'e' || k === 'E') this.setTool('erase')
    else if (k === 'v' || k === 'V') this.setTool('navigate')
    else if (k === 'k' || k === 'K') this.toggleKeyCursor()
    else if (k === 'n' || k === 'N') this.enqueue({ kind: 'new_object' })
    else if (k === '[') this.setBrush(this.brushPx - 1)
    else if (k === ']') this.setBrush(this.brushPx + 1)
    else if (k === 'o' || k === 'O') this.toggleOutline()
    else if (k === 'g' || k === 'G') this.toggleSuggest()
    else if (k === 'm' || k === 'M') this.toggleLayout()
    else if (k === 'h' || k === 'H') this.toggleHidden(this.shownActive())
    else if (k === '+' || k === '=') this.zoom(1.25)
    else if (k === '-') this.zoom(0.8)
    else if (k === '0') this.resetZoom()
    else handled = false
    if (handled) { e.preventDefault(); e.stopPropagation() }
  },
}

export type KeyboardMethods = typeof keyboardMethods
