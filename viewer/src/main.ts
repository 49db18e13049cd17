// medseg's image panel: NiiVue (WebGL) with the study and its labels in the browser.
// Paging, zoom, pan and window/level never call the server; prompts go to /viewer-api in order
// (a client-side queue: none is dropped) and come back as the changed label plane. Requests carry
// the HttpOnly session cookie (same origin); this script never sees a token or a session id.
import { Niivue, NVImage, SLICE_TYPE, DRAG_MODE, SHOW_RENDER, MULTIPLANAR_TYPE } from '@niivue/niivue'
import './viewer.css'
import { SliceShader } from './slice_shader'

type LabelDef = { value: number; name: string; colour: string }
type ObjectMarks = { view: string; index: number; points: { mm: number[]; positive: boolean }[]; box: number[][] | null }
type State = {
  study: string | null; rev: number; boot?: string; name?: string; rgb?: boolean; is2d?: boolean
  views?: string[]; view?: string; acquisition?: string; slice_mm?: number[]
  labels?: LabelDef[]; active?: number; window?: { level: number; width: number } | null; opacity?: number
  object?: ObjectMarks | null; index?: number
  review?: { index: number; position: number; n: number }
  anchors?: number[]  // the active label's anchor slices (their index in the acquisition view): propagation keeps them
  table?: string
}
type Suggested = { view: string; index: number; mm: number[]; positive: boolean; score: number }
type Answer = {
  ok: boolean; error?: string; status?: string; rev?: number; base?: number; reload?: boolean; object?: ObjectMarks | null
  at?: number; boot?: string  // the status's place in its server process's news order (app.messages.news_stamp)
  table?: string  // the label table the action found (a digest): another tab renamed or recoloured a label
  suggest?: Suggested | null
  model?: string  // a model choice's answer: the model in use
  page?: number  // the newest page state built when the action was applied (app.viewer.actions.PageOrder)
  patch?: { axis: number; index: number; shape: number[]; data: string } | null
}
type Tool = 'point' | 'box' | 'brush' | 'erase' | 'navigate'
// A server message's place in the news order: the server process (``boot``) and its count there (``seq``). Never
// the wall clock: one stepped back (NTP) made later news look older.
type News = { boot: string; seq: number }
const SUGGEST_KINDS = new Set(['point', 'box', 'undo', 'redo'])
// they end the suggestion's answer
const EDIT_KINDS = new Set(['brush', 'erase', 'new_object', 'active', 'model', 'alternative'])
// the actions that move the label map's revision when applied (app.viewer.actions), and how a message names them
const REVISION_KINDS = new Set(['point', 'box', 'brush', 'erase', 'undo', 'redo', 'alternative'])
const SAID: Record<string, string> = {
  point: 'click', box: 'box', brush: 'brush stroke', erase: 'eraser stroke', undo: 'undo', redo: 'redo',
  new_object: 'New object', active: 'label choice', window: 'window change', view: 'slice change',
  model: 'model choice', alternative: 'choice of alternative',
}
type Pending = { kind: 'point' | 'box' | 'stroke'; view: string; mm: number[][]; positive?: boolean }

const VIEW_OF: Record<number, string> = { 0: 'axial', 1: 'coronal', 2: 'sagittal' }
const SLICE_OF: Record<string, SLICE_TYPE> = { axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL }
const AXIS_OF: Record<string, number> = { sagittal: 0, coronal: 1, axial: 2 } // RAS axis held fixed by a view
const DRAG_PX = 4 // a press that moves less than this is a click, not a box
// An idle tab asks the server for its label table's digest this often while it is shown (GET /viewer-api/news,
// ~100 bytes): another tab's rename or colour change reaches it without an action of its own. A failed poll
// doubles the wait, up to NEWS_MAX_MS (a server that is down gets no storm); a hidden tab does not poll.
const NEWS_MS = 3000
const NEWS_MAX_MS = 60_000
// The page's buttons whose Gradio events read or change the session's labels, label table or study: they do not go
// through the viewer's queue, so pressed while prompts were still queued they ran first. An export missed the last
// clicks, Open sample made the queued clicks arrive after the switch (refused as "another tab opened ..."), and Add
// label was undone by the queued clicks (each sets its label active). Pressed while the queue is busy, a press is
// held and made again once the queue is empty. Not Upload's press (its file chooser opens only on the user's own
// press): the files' choice is held instead (holdUpload).
const AFTER_QUEUE = ['#open-sample', '#export-btn', '#add-label', '#clear-label', '#propagate', '#review', '#review-prev',
  '#review-accept', '#review-cut', '#review-next', '#apply-brush', '#oneshot-set', '#oneshot-apply'].join(', ')

const SHORTCUTS: [string, string][] = [
  ['P / B / R / E / V', 'point, box, brush, eraser, navigate'],
  ['click', 'positive point (shift+click: negative)'],
  ['drag', 'box (in point and box modes)'],
  ['Esc', 'cancel a box being drawn'],
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
  ['ctrl+Z / ctrl+Y', 'undo / redo'],
]

/** Latency trace (benchmarks/ui_latency.py --trace sets window.medsegTrace = []): epoch ms, the server's
 * clock ($MEDSEG_TRACE) lines up with it. Nothing is recorded unless the array is there. */
function traceMark(event: string, fields: Record<string, unknown> = {}): void {
  const log = (window as any).medsegTrace as unknown[] | undefined
  if (log) log.push({ t: performance.timeOrigin + performance.now(), event, ...fields })
}

let traceSeq = 0

function hexToRgb(hex: string): number[] {
  const h = hex.replace('#', '')
  return [parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16)]
}

/** Base64 to bytes: the browser's own decoder where it has one; else a plain loop (Uint8Array.from with a
 * mapping callback took ~15 ms for a 256x256 uint16 plane on the loaded 2-core machine). */
function base64Bytes(data: string): Uint8Array {
  const native = (Uint8Array as any).fromBase64
  if (typeof native === 'function') return native(data)
  const s = atob(data)
  const out = new Uint8Array(s.length)
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i)
  return out
}

/** A failed request as a person reads it: fetch's network failure is "TypeError: Failed to fetch", which said
 * "the server did not answer (TypeError: Failed to fetch), nor when asked again (TypeError: Failed to fetch)". */
function failure(e: unknown): string {
  return e instanceof TypeError ? 'no connection' : String(e)
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, text = ''): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v)
  if (text) e.textContent = text
  return e
}

class Viewer {
  nv: Niivue
  slices: SliceShader
  root: HTMLElement
  stage: HTMLElement
  canvas: HTMLCanvasElement
  overlay: HTMLCanvasElement
  statusLine: HTMLElement
  info: HTMLElement
  legend: HTMLElement
  legendKey = ''  // the labels the legend's rows were built for (renderLegend)
  state: State | null = null
  stateText = ''
  pageStatus = ''
  study: string | null = null
  rev = -1
  revBoot: string | null = null  // the server process that counted ``rev`` (app.messages.BOOT)
  labelsVol: NVImage | null = null
  tool: Tool = 'point'
  negative = false
  newObject = false
  three = false
  outline = false
  opacity = 0.45
  brushPx = 8
  hidden = new Set<number>()
  locked = new Set<number>()
  currentView = 'axial'
  object: ObjectMarks | null = null
  suggestOn = false // issue 18: mark where the answer is least sure (opt-in: docs/clicks.md)
  suggestion: Suggested | null = null
  pending: Pending[] = []
  inFlight = 0
  queue: Promise<void> = Promise.resolve()
  // a brush stroke that leaves the image is cut there: ``done`` holds its finished pieces, ``out`` says it is outside
  drag: { x0: number; y0: number; x: number; y: number; view: string; mm0: number[]; stroke: number[][]; button: number
    done: number[][][]; out: boolean; last: [number, number]; outAt: [number, number] } | null = null
  hover: [number, number] | null = null
  wl: { x: number; y: number; level: number; width: number } | null = null
  loading: Promise<void> | null = null
  windowTimer = 0
  /** The window this tab's right-drag set and the server has not answered yet. A page's state (built before the
   * drag's action arrived) carries the server's old window: applied meanwhile, it undid the drag on the screen, and
   * one landing between the last move and the button's release sent the old width as the "custom" window (the
   * flaky wheel/zoom/window e2e test). Such states leave the window alone until the drag's own action is answered. */
  windowOwn: { level: number; width: number } | null = null
  viewTimer = 0
  encodeBusy = false
  reloading: Promise<void> | null = null
  reloadWanted = false
  look = ''  // the label look last sent to the GPU (applyLabelLook) and the layer it went to
  shownLook = ''  // the label opacity and outline last drawn by the viewer's slice shader (uniforms)
  lookOf: NVImage | null = null
  statusSeq = 0  // bumped by every message shown: a late "Ready" never hides a newer one
  // a study just loaded: say "Ready" once its shown slice is encoded, whoever encoded it (the page's warm-up
  // often wins, and then the encode request has no news of its own: the "never Ready" flake)
  readyWanted = false
  syncWanted = false  // an action of the queue's run asks for the page's sync when the queue is empty
  encodeWanted = false  // ... or for the shown slice's encode
  userActs = 0  // the user's key and pointer presses anywhere on the page
  errorAt = -1  // userActs when the error shown appeared (-1: no error shown)
  statusHost: Element | null = null
  statusObserver: MutationObserver | null = null
  pageStatuses: { text: string; news?: News }[] = []  // the page's status line, each change in order, until the next poll shows them
  newsShown: News | null = null  // the newest server message's place in the news order
  tableStale = false  // an answer found another label table than this page's: the page syncs when the queue is done
  newsTimer = 0  // the next poll of /viewer-api/news (0: none due)
  newsBusy = false  // a poll is in flight (its end schedules the next: one chain of polls, never two)
  newsWait = NEWS_MS  // the wait before the next poll: doubled after each failure, back to NEWS_MS after a success
  tableSynced: { table: string; at: number } | null = null  // the last digest a poll synced the page for, and when
  // another tab of the session opened another study: this tab follows it (its sync loads it) and says so once shown
  following: { study: string; name: string; from: string; at: number; stamps: number } | null = null
  pageStamp = ''  // the news stamp of the page's status line (app.messages.stamped), and how many it has had
  pageStamps = 0
  pageSeq: { boot: string; n: number } | null = null  // the oldest page still taken (stalePage, pagesBefore)
  staleSeen = ''
  syncAsked = 0  // performance.now() of the last page sync asked, until a page newer than the answers is taken
  reviewKey = ''
  encodeAgain = false
  exported: { boot: string; rev: number } | null = null  // the label revision the last export's file holds
  exportedTag = ''
  editsQueued = 0  // label edits (prompts, strokes, undo, redo) sent or waiting in the queue: a reload asks first
  labelChanges = 0  // label choices and Add label presses queued: prompts made meanwhile take their label when sent
  chosen: { label: number } | null = null  // the newest label choice still on its way (H hides its label: shownActive)
  held: HTMLElement[] = []  // the page's buttons pressed while prompts were queued (AFTER_QUEUE), pressed again after
  heldUploads: HTMLInputElement[] = []  // Upload's file input, its files chosen while prompts were queued (holdUpload)
  alternativeShown: HTMLInputElement | null = null  // the radio checked at the last mousedown
  replaying: HTMLInputElement | null = null  // the input whose held change is being made again
  unplaced: { x: number; y: number; button: number } | null = null  // a press made while no study is shown (sayUnplaced)
  loadFailed: { stamps: number } | null = null  // the study's load failed; pageStamps then (pollState loads it again)
  loadRefusal = -1  // the statusSeq of the line saying a press was not placed while the study loaded
  frameTimes: number[] = []
  promptTimes: number[] = []
  answerTimes: number[] = []  // the same prompts, until the server's answer arrived (the rest is drawing)

  constructor(root: HTMLElement) {
    this.root = root
    root.innerHTML = ''
    root.classList.add('mv-root')
    const bar = el('div', { class: 'mv-toolbar', role: 'toolbar' })
    const tools: [Tool, string, string][] = [
      ['point', 'Point', 'P: click for a positive point, shift+click for a negative one; drag draws a box'],
      ['box', 'Box', 'B: drag a box around the structure'],
      ['brush', 'Brush', 'R: paint the active label (size with [ and ])'],
      ['erase', 'Eraser', 'E: erase the active label'],
      ['navigate', 'Navigate', 'V: click moves the crosshair; no prompts'],
    ]
    for (const [tool, name, tip] of tools) {
      const b = el('button', { class: 'mv-btn mv-tool', 'data-tool': tool, id: `tool-${tool}`, title: tip, type: 'button' }, name)
      b.addEventListener('click', () => this.setTool(tool))
      bar.append(b)
    }
    const neg = el('label', { class: 'mv-check', title: 'Clicks add negative points (or hold shift)' })
    const negBox = el('input', { type: 'checkbox', id: 'tool-negative' }) as HTMLInputElement
    negBox.addEventListener('change', () => { this.negative = negBox.checked })
    neg.append(negBox, document.createTextNode(' negative'))
    bar.append(neg)
    const size = el('label', { class: 'mv-size', title: 'Brush diameter in pixels of the image grid ([ and ])' }, 'size ')
    const sizeIn = el('input', { type: 'number', id: 'brush-size', min: '1', max: '100', value: String(this.brushPx) }) as HTMLInputElement
    sizeIn.addEventListener('change', () => this.setBrush(Number(sizeIn.value)))
    size.append(sizeIn, document.createTextNode(' px'))
    bar.append(size)
    const sep = el('span', { class: 'mv-sep' })
    bar.append(sep)
    const actions: [string, string, string, () => void][] = [
      ['new-object', 'New object', 'N: the next prompt starts another object (the others stay)', () => this.enqueue({ kind: 'new_object' })],
      ['undo-btn', 'Undo', 'ctrl+Z', () => this.enqueue({ kind: 'undo' })],
      ['redo-btn', 'Redo', 'ctrl+Y', () => this.enqueue({ kind: 'redo' })],
      ['layout-btn', '3 views', 'M: one view or linked axial, coronal and sagittal views', () => this.toggleLayout()],
      ['outline-btn', 'Outline', 'O: outline or fill', () => this.toggleOutline()],
      ['suggest-btn', 'Suggest', 'G: after each prompt, mark where the answer is least sure (a dashed ring: + to add, − to remove)', () => this.toggleSuggest()],
      ['zoom-reset', 'Fit', '0: reset zoom and pan', () => this.resetZoom()],
    ]
    for (const [id, name, tip, fn] of actions) {
      const b = el('button', { class: 'mv-btn', id, title: tip, type: 'button' }, name)
      b.addEventListener('click', fn)
      bar.append(b)
    }
    const opacity = el('label', { class: 'mv-size', title: 'Label opacity' }, 'opacity ')
    const opIn = el('input', { type: 'range', id: 'label-opacity', min: '0', max: '1', step: '0.05', value: String(this.opacity) }) as HTMLInputElement
    opIn.addEventListener('input', () => { this.opacity = Number(opIn.value); this.applyLabelLook() })
    opacity.append(opIn)
    bar.append(opacity)

    this.stage = el('div', { class: 'mv-stage', id: 'viewer-stage', tabindex: '0' })
    this.canvas = el('canvas', { id: 'viewer-canvas' })
    this.overlay = el('canvas', { class: 'mv-overlay', id: 'viewer-overlay' })
    this.info = el('div', { class: 'mv-info', id: 'viewer-info' })
    this.stage.append(this.canvas, this.overlay, this.info)
    const below = el('div', { class: 'mv-below' })
    this.statusLine = el('div', { class: 'mv-status', id: 'viewer-status', role: 'status', 'aria-live': 'polite' })
    this.legend = el('div', { class: 'mv-legend', id: 'viewer-legend' })
    const help = el('details', { class: 'mv-help', id: 'viewer-shortcuts' })
    help.append(el('summary', {}, 'Shortcuts'))
    const table = el('table')
    for (const [k, v] of SHORTCUTS) {
      const tr = el('tr')
      tr.append(el('td', {}, k), el('td', {}, v))
      table.append(tr)
    }
    help.append(table)
    below.append(this.legend, help)
    root.append(bar, this.stage, this.statusLine, below)

    this.nv = new Niivue({
      backColor: [0, 0, 0, 1],
      crosshairColor: [1, 0.75, 0, 0.7],
      crosshairWidth: 1,
      show3Dcrosshair: false,
      isOrientationTextVisible: true,
      isRadiologicalConvention: true,
      multiplanarShowRender: SHOW_RENDER.NEVER,
      multiplanarLayout: MULTIPLANAR_TYPE.AUTO,
      dragAndDropEnabled: false,
      isColorbar: false,
      logLevel: 'error',
      loadingText: '',
      textHeight: 0.05,
      isNearestInterpolation: false,
      mouseEventConfig: {
        leftButton: { primary: DRAG_MODE.crosshair },
        rightButton: DRAG_MODE.windowing,
        centerButton: DRAG_MODE.pan,
      },
    } as any)
    this.slices = new SliceShader(this.nv)
    this.setTool('point')
    // registered before the viewer's own key and mouse handlers: a press counts before its message shows
    for (const type of ['pointerdown', 'keydown']) {
      window.addEventListener(type, (e) => { if (e.isTrusted) this.userActs++ }, true)
    }
    this.bindInput()
  }

  async start(): Promise<void> {
    await this.nv.attachToCanvas(this.canvas)
    this.slices.compile()
    this.nv.onLocationChange = () => this.showInfo()
    const draw = this.nv.drawScene.bind(this.nv)
    ;(this.nv as any).drawScene = () => {
      const t0 = performance.now()
      this.slices.prepare()
      const out = draw()
      this.drawOverlay()
      this.frameTimes.push(performance.now() - t0)
      if (this.frameTimes.length > 500) this.frameTimes.shift()
      return out
    }
    new ResizeObserver(() => this.drawOverlay()).observe(this.stage)
    setInterval(() => this.pollState(), 100)
    this.pollState()
    this.scheduleNews()
  }

  // --- news of other tabs of this session -------------------------------------------------------
  /** The next poll of the server's news after ``newsWait``; none while the tab is hidden (visibilitychange
   * reschedules it), while one is due or while one is in flight. */
  scheduleNews(): void {
    if (this.newsTimer || this.newsBusy || document.visibilityState === 'hidden') return
    this.newsTimer = window.setTimeout(() => { this.newsTimer = 0; this.pollNews() }, this.newsWait)
  }

  async pollNews(): Promise<void> {
    this.newsBusy = true
    try {
      if (this.state?.study) {
        const r = await fetch(this.url('news'), { cache: 'no-store' })
        if (!r.ok) throw new Error(`news: ${r.status}`)
        this.onNews(await r.json())
      }
      this.newsWait = NEWS_MS
    } catch {
      this.newsWait = Math.min(this.newsWait * 2, NEWS_MAX_MS)
    } finally {
      this.newsBusy = false
      this.scheduleNews()
    }
  }

  /** Another tab renamed or recoloured a label: this page's table (legend, label box) is refreshed by its sync,
   * at once when nothing is queued, else when the queue is done. One sync per digest, again after 10 s if the page
   * still shows another table (a sync that failed). */
  onNews(news: { study?: string | null; name?: string; table?: string | null; rev?: number | null; boot?: string }): void {
    if (news.study && this.study && news.study !== this.study) { this.followStudy(news.study, news.name); return }
    // another tab's edit, a propagation, a Clear label: the labels are fetched again (nothing queued or drawn here)
    if (news.study === this.study && news.rev != null && this.labelsNewer(news.boot, news.rev) && this.inFlight === 0 &&
        !this.drag && !this.loading) this.reloadLabels()
    const table = news.table, mine = this.state?.table
    if (!table || mine === undefined || table === mine || news.study !== this.study) return
    const synced = this.tableSynced
    if (synced && synced.table === table && performance.now() - synced.at < 10_000) return
    if (this.inFlight > 0 || this.drag) { this.tableStale = true; return }
    this.tableSynced = { table, at: performance.now() }
    this.syncPage()
  }

  /** Another tab of this session opened another study: the session has one open study, and this tab's prompts
   * would be refused (409), so it follows: its page's sync loads that study, and the status line says which and
   * that the first study's work is kept (the session keeps each study's labels). Not while the user draws or an
   * action is in flight (the next poll follows, or the refused action's sync). Before, it went on showing the
   * first study without a word. */
  followStudy(study: string, name: string | undefined): void {
    if (this.loading || this.inFlight > 0 || this.drag) return
    const f = this.following
    if (f && f.study === study && performance.now() - f.at < 10_000) return  // its sync is under way
    this.following = { study, name: name || 'another study', from: this.state?.name || 'the study shown before',
      at: performance.now(), stamps: this.pageStamps }
    traceMark('study.follow')
    this.syncPage()
  }

  // --- state from the Gradio page --------------------------------------------------------------
  pollState(): void {
    this.watchPageStatus()
    this.readPageStatus()
    for (const { text, news } of this.pageStatuses.splice(0)) {
      if (text) (text.startsWith('⚠') ? this.showError(text.replace(/^⚠\s*/, '')) : this.showStatus(text, news))
    }
    // the study's load failed (a dropped connection): the server's next message (its warm-up's "Ready", the user's
    // Open again) loads it again; before, the same study opened again was taken as loaded and the viewer stayed black
    const failed = this.loadFailed
    if (failed && this.pageStamps !== failed.stamps && this.state?.study && !this.loading) {
      this.loading = this.loadStudy(this.state)
    }
    const holder = document.querySelector('#viewer-state [data-state]') as HTMLElement | null
    this.noteExport(holder?.getAttribute('data-exported') || '')  // a fact whatever the page's age
    // every poll, not only when the labels or the export change: Gradio re-renders the Download button (its class
    // attribute from its own props), which could drop the mark set once, and a page in between never set it again
    this.markDownload()
    if (holder && this.stalePage(holder.getAttribute('data-seq') || '')) return
    const text = holder?.getAttribute('data-state') || ''
    if (!text || text === this.stateText) return
    this.stateText = text
    let s: State
    try { s = JSON.parse(text) } catch { return }
    this.state = s
    this.onState(s)
  }

  /** An action's answer: the pages built before it (numbered up to ``a.page``) hold the server as it was before
   * the action, so they are stale from now on. A page built before a label picked in the legend but delivered
   * after its answer made the old label active again here, and the click made next named it: the server made it
   * active again and the structure went into it (the pick lost; the flaky add-label/label-pick e2e test). */
  pagesBefore(a: Answer): void {
    if (a.page === undefined || !a.boot) return
    const shown = this.pageSeq
    if (!shown || shown.boot !== a.boot || shown.n <= a.page) this.pageSeq = { boot: a.boot, n: a.page + 1 }
  }

  /** An export's page names the label revision its file holds (``BOOT.REV``, app.ui ``data-exported``). */
  noteExport(tag: string): void {
    const m = /^([0-9a-f]+)\.(\d+)$/.exec(tag)
    if (!m || tag === this.exportedTag) return
    this.exportedTag = tag
    this.exported = { boot: m[1], rev: Number(m[2]) }
    this.markDownload()
  }

  /** The Download button holds the labels of the last export: a hurried user exported, went on editing (or
   * clicked while the export ran), and later pressed Download believing the file current; it held none of the
   * later edits. Once the labels shown are newer than the file, the button says so (class ``mv-stale``). */
  markDownload(): void {
    const button = document.querySelector('#download')
    if (!button || !this.exported || this.rev < 0) return  // labels on their way: judged when they are shown
    const older = (this.revBoot ?? null) !== this.exported.boot || this.rev > this.exported.rev
    button.classList.toggle('mv-stale', older)
    if (older) button.setAttribute('title', 'This file holds the labels as they were at the export: export again')
    else button.removeAttribute('title')
  }

  /** Note the page's status line on every change, not only every 100 ms: an error followed within the
   * poll's interval by another message was never seen (the poll shows them in order, the error kept). */
  watchPageStatus(): void {
    const host = document.querySelector('#status')
    if (!host || host === this.statusHost) return
    this.statusObserver?.disconnect()
    this.statusHost = host
    this.statusObserver = new MutationObserver(() => this.readPageStatus())
    this.statusObserver.observe(host, { childList: true, subtree: true, characterData: true })
  }

  /** The page's status line and its place in the news order (the server's hidden ``<time title="news BOOT.N">``,
   * app.messages.stamped). */
  readPageStatus(): void {
    const md = document.querySelector('#status [data-testid="markdown"]') as HTMLElement | null
    const pageStatus = md?.innerText?.trim() ?? ''
    const stamp = md?.querySelector('time[title]')?.getAttribute('title') ?? ''
    if (stamp !== this.pageStamp) { this.pageStamp = stamp; this.pageStamps++ }  // a new server message, same text or not
    if (pageStatus === this.pageStatus) return
    this.pageStatus = pageStatus
    const m = /^news ([0-9a-f]+)\.(\d+)$/.exec(stamp)
    this.pageStatuses.push({ text: pageStatus, news: m ? { boot: m[1], seq: Number(m[2]) } : undefined })
  }

  /** A page the server built before one this tab has shown, or before an action this tab has had answered (its
   * ``data-seq``, app.viewer.actions.PageOrder): Gradio applies each event's outputs as they arrive, so a page built
   * before an Add label but sent after it put label 1 back in the label box while the server had label 2 active.
   * Such a page is not taken as the state, and the page is asked for again (its sync is built after everything
   * sent before it), once the queue is done if actions are on their way (each would make it stale again). */
  stalePage(seq: string): boolean {
    const m = /^([0-9a-f]+)\.(\d+)$/.exec(seq)
    if (!m) return false
    const page = { boot: m[1], n: Number(m[2]) }
    const shown = this.pageSeq
    if (shown && shown.boot === page.boot && page.n < shown.n) {
      // a sync asked since (the one after an answer makes the page shown stale at once) brings a newer page: a
      // second one asked here ran after it (Gradio defers it), and its page, built after whatever came next (N),
      // hid the alternatives list a pick was being made in
      if (this.staleSeen !== seq && (this.inFlight > 0 || !this.syncOnItsWay())) {
        this.staleSeen = seq
        traceMark('page.stale')
        if (this.inFlight > 0) this.syncWanted = true; else this.syncPage()
      }
      return true
    }
    this.pageSeq = page
    this.staleSeen = ''  // a page taken: a late one shown after it (even one dropped before) is asked for again
    this.syncAsked = 0  // a page newer than every answer: the sync asked (if any) is answered
    return false
  }

  onState(s: State): void {
    traceMark('state.changed', { rev: s.rev })
    if (!s.study) {
      this.showStatus('Open a sample or upload a study.')
      return
    }
    this.renderLegend()
    if (s.study !== this.study) {
      this.loading = this.loadStudy(s)
      return
    }
    if (this.loading) { this.loading.then(() => this.onState(this.state!)); return }
    // Only a newer revision than the labels shown means the server changed them (propagation, one-shot,
    // clear...): the state of the page's sync after a click is as old as that click's answer, or older.
    if (this.labelsNewer(s.boot, s.rev) && this.inFlight === 0) this.reloadLabels()
    this.applyLabelLook()
    if (s.window && !this.wl && !this.windowOwn) this.applyWindow(s.window)
    this.object = s.object ?? null
    this.followReview(s)
    this.showInfo()  // the anchors of the active label may have changed
    this.drawOverlay()
  }

  /** A review of a propagation (app.review) steps through slices on the server: show the slice it is at. */
  followReview(s: State): void {
    const key = s.review ? `${s.view}/${s.review.index}/${s.review.position}` : ''
    if (key && key !== this.reviewKey && s.slice_mm && s.view) {
      this.currentView = s.view
      if (!this.three) this.applyLayout()
      this.moveTo(s.slice_mm, s.view)
      this.showInfo()
      this.requestEncode()
    }
    this.reviewKey = key
  }

  /** Is the server's label map (revision ``rev`` of server process ``boot``) newer than the one shown? Revisions
   * count within one server process: one of another process (restarted) is news, whatever its number; the
   * revision was the wall clock, and a server restarted with its clock stepped back seemed to have older labels. */
  labelsNewer(boot: string | undefined, rev: number): boolean {
    return (boot !== undefined && boot !== this.revBoot) || rev > this.rev
  }

  url(what: string): string {
    return `/viewer-api/${what}`
  }

  async loadStudy(s: State): Promise<void> {
    this.study = s.study
    this.loadFailed = null
    this.showStatus(`Loading ${s.name ?? 'the study'} into the viewer…`)
    const nv = this.nv
    try {
      while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1])
      this.labelsVol = null
      await nv.loadVolumes([{ url: this.url(`volume/${s.study}.nii.gz`), name: 'study.nii.gz' } as any])
      this.slices.attach(nv.volumes[0], !!s.rgb)
      this.fitCrosshair()
      this.rev = -1
      this.wl = null
      this.windowOwn = null  // a drag on the last study: its window is not this one's
      await this.reloadLabels()
      this.currentView = s.view || 'axial'
      this.three = false
      this.applyLayout()
      if (s.slice_mm) this.moveTo(s.slice_mm, s.view || 'axial')
      if (s.window) this.applyWindow(s.window)
      if (s.opacity !== undefined) this.opacity = s.opacity
      this.object = s.object ?? null
      this.applyLabelLook()
      this.resetZoom()
      this.showInfo()
      const f = this.following
      this.following = null
      // a poll may see the study this page is opening before the open's answer reaches it: that answer puts a new
      // "Opened <name>" on the page's status line since the poll, and then it is no other tab's
      const mine = f !== null && this.pageStamps !== f.stamps && this.pageStatus.startsWith(`Opened ${s.name ?? ''}`)
      if (this.loadRefusal === this.statusSeq) this.errorAt = -1  // "still loading: not placed": now it is shown
      if (f && f.study === s.study && !mine) {
        this.errorAt = -1  // an error shown was about the study left: this line is the news now
        this.showStatus(`Another tab opened ${f.name}; this tab follows it. Your labels on ${f.from} are kept: ` +
          'open it again to go back to them.')
      } else this.showStatus(`${s.name ?? 'Study'} in the viewer. Click on a structure or drag a box.`)
      this.root.setAttribute('data-study', s.study || '')
      this.readyWanted = true
      this.requestEncode()
    } catch (e) {
      // nothing of it stays: opening it again loads it afresh (the same study was taken as loaded, and the viewer stayed
      // black under "Opened ... Ready")
      this.study = null
      while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1])
      this.labelsVol = null
      this.root.removeAttribute('data-study')
      this.loadFailed = { stamps: this.pageStamps }
      this.showError(`could not load ${s.name ?? 'the study'} into the viewer (${e}): open it again`)
    } finally {
      this.loading = null
    }
  }

  /** The crosshair's thickness for the study loaded: NiiVue draws it one voxel wide, a hairline on a 256 x 256 CT but
   * an eighth of an 8 x 8 picture, a broad bar hiding the pixels and labels under it. It is now at most 1/256 of the
   * study's largest side (one voxel on the CT, as before). */
  fitCrosshair(): void {
    const v = this.nv.volumes[0] as any
    const dims = v?.dimsRAS as number[] | undefined, pix = v?.pixDimsRAS as number[] | undefined
    if (!dims || !pix) return
    const voxel = Math.min(pix[1], pix[2], pix[3])
    const side = Math.max(dims[1] * pix[1], dims[2] * pix[2], dims[3] * pix[3])
    this.nv.opts.crosshairWidthUnit = 'mm'
    this.nv.opts.crosshairWidth = Math.min(voxel, side / 256)
    const mesh = (this.nv as any).crosshairs3D  // NiiVue keeps its crosshair's mesh until the position moves
    if (mesh) {
      this.nv.gl.deleteBuffer(mesh.indexBuffer)
      this.nv.gl.deleteBuffer(mesh.vertexBuffer)
      ;(this.nv as any).crosshairs3D = null
    }
  }

  /** Fetch the whole label map again. One fetch at a time: a call while one runs shares it and fetches once
   * more after it (the server may have changed since that fetch began). */
  reloadLabels(): Promise<void> {
    if (this.reloading) { this.reloadWanted = true; return this.reloading }
    this.reloading = (async () => {
      try {
        do { this.reloadWanted = false; await this.fetchLabels() } while (this.reloadWanted)
      } finally {
        this.reloading = null
      }
    })()
    return this.reloading
  }

  async fetchLabels(): Promise<void> {
    traceMark('labels.reload')
    const s = this.state!
    const key = this.study
    const shown = this.rev, shownBoot = this.revBoot
    const response = await fetch(this.url(`labels/${key}.nii.gz`), { cache: 'no-store' })
    if (!response.ok) { this.showError(await this.errorOf(response)); return }
    const rev = Number(response.headers.get('X-Labels-Revision') ?? s.rev)
    const boot = response.headers.get('X-Labels-Boot') ?? s.boot ?? null
    const buffer = await response.arrayBuffer()
    const vol = await NVImage.new(buffer, 'labels.nii.gz', 'gray', 1)
    // A label map (NIFTI_INTENT_LABEL): NiiVue then draws it with its integer atlas shader, one exact
    // colour per value, and can outline it. Without it the labels went through the intensity shader
    // (values scaled by cal_min/cal_max into the colour table) and Outline only made the fill opaque.
    vol.hdr!.intent_code = 1002
    if (key !== this.study) { this.reloadWanted = true; return }  // another study opened meanwhile
    // a click's patch newer than this copy came while it was fetched (or one of another server process: its order
    // is unknown): drop the copy and fetch the map again
    if ((this.rev !== shown || this.revBoot !== shownBoot) && (this.revBoot !== boot || this.rev > rev)) {
      this.reloadWanted = true
      return
    }
    if (this.labelsVol && this.labelsVol.img && vol.img && this.labelsVol.img.length === vol.img.length) {
      (this.labelsVol.img as any).set(vol.img as any)
    } else {
      if (this.labelsVol && this.nv.volumes.includes(this.labelsVol)) this.nv.removeVolume(this.labelsVol)
      this.labelsVol = vol
      // the viewer's slice shader draws the labels from its own texture (applyLabelLook uploads them)
      if (!this.slices.active) this.nv.addVolume(vol)
    }
    this.rev = rev
    this.revBoot = boot
    this.root.setAttribute('data-rev', String(rev))
    this.markDownload()
    this.applyLabelLook(true)
  }

  /** The label layer's colours, visibility, outline and opacity. Each page state calls it, but the GPU
   * pass (NiiVue's refresh of the label layer, hundreds of ms in a software renderer) runs only when the look
   * changed or ``upload`` asks for the label voxels to go to the GPU again. With the viewer's slice shader
   * (slice_shader.ts) the opacity and the outline are uniforms: changing them costs one frame. */
  applyLabelLook(upload = false): void {
    const vol = this.labelsVol
    const labels = this.state?.labels ?? []
    if (!vol) return
    const own = this.slices.active
    const look = JSON.stringify(own ? [labels, [...this.hidden].sort(), 'own'] : [labels, [...this.hidden].sort(), this.outline, this.opacity])
    if (!upload && vol === this.lookOf && look === this.look) {
      if (own) this.drawLabelUniforms()
      this.renderLegend()
      return
    }
    traceMark('labelLook')
    this.lookOf = vol
    this.look = look
    const max = Math.max(1, ...labels.map((d) => d.value))
    const R = [0], G = [0], B = [0], A = [0], I = [0], names = ['']
    for (let v = 1; v <= max; v++) {
      const d = labels.find((x) => x.value === v)
      const [r, g, b] = d ? hexToRgb(d.colour) : [255, 255, 255]
      R.push(r); G.push(g); B.push(b); A.push(this.hidden.has(v) ? 0 : 255); I.push(v); names.push(d?.name ?? String(v))
    }
    vol.setColormapLabel({ R, G, B, A, I, labels: names } as any)
    if (own) {
      // the viewer's textures: the label values (uploaded when asked) and a colour per value; the shader applies
      // the opacity and draws the outline
      const lut = new Uint8Array((max + 1) * 4)
      for (let v = 1; v <= max; v++) lut.set([R[v], G[v], B[v], A[v]], v * 4)
      this.slices.setColours(lut)
      if (upload) this.slices.uploadLabels(vol.img as Uint16Array)
      this.slices.labelOpacity = this.opacity
      this.slices.labelOutline = this.outline
      this.shownLook = JSON.stringify([this.opacity, this.outline])
      this.nv.drawScene()
    } else {
      vol.opacity = this.outline ? 0 : this.opacity // outline: borders opaque, the inside clear
      // the option itself: NiiVue's setAtlasOutline runs updateGLVolume on its own, a second full pass
      ;(this.nv.opts as any).atlasOutline = this.outline ? 1 : 0
      ;(this.nv.opts as any).atlasActiveIndex = 0
      this.nv.updateGLVolume()
    }
    this.renderLegend()
  }

  /** The label opacity and outline of the viewer's slice shader: one frame when they changed, else nothing. */
  drawLabelUniforms(): void {
    const shown = JSON.stringify([this.opacity, this.outline])
    if (shown === this.shownLook) return
    this.shownLook = shown
    this.slices.labelOpacity = this.opacity
    this.slices.labelOutline = this.outline
    this.nv.drawScene()
  }

  applyWindow(w: { level: number; width: number }): void {
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
    // 3D gradient (vite.config.js): only volume rendering reads it, never shown here, and it was most of the cost.
    const opts = this.nv.opts as any
    opts.skipGradient = true
    try {
      this.nv.refreshLayers(vol, 0)
    } finally {
      opts.skipGradient = false
    }
    this.nv.drawScene()
    this.showInfo()
  }

  // --- layout, navigation --------------------------------------------------------------------
  applyLayout(): void {
    const is2d = this.state?.is2d
    if (this.three && !is2d) this.nv.setSliceType(SLICE_TYPE.MULTIPLANAR)
    else this.nv.setSliceType(SLICE_OF[this.currentView] ?? SLICE_TYPE.AXIAL)
    const b = this.root.querySelector('#layout-btn')
    if (b) b.textContent = this.three ? '1 view' : '3 views'
    this.root.setAttribute('data-layout', this.three ? 'three' : 'one')
    this.drawOverlay()
  }

  toggleLayout(): void {
    if (this.state?.is2d) return
    this.three = !this.three
    this.applyLayout()
  }

  toggleOutline(): void {
    this.outline = !this.outline
    const b = this.root.querySelector('#outline-btn')
    if (b) b.textContent = this.outline ? 'Fill' : 'Outline'
    this.applyLabelLook()
  }

  toggleSuggest(): void {
    this.suggestOn = !this.suggestOn
    this.root.querySelector('#suggest-btn')?.classList.toggle('mv-on', this.suggestOn)
    if (!this.suggestOn) { this.suggestion = null; this.drawOverlay() }
  }

  // both show the zoom in the corner at once: the keys (+, -, 0) and Fit left it saying the zoom before
  resetZoom(): void {
    this.nv.setPan2Dxyzmm([0, 0, 0, 1] as any)
    this.drawOverlay()
    this.showInfo()
  }

  zoom(factor: number): void {
    const p = this.nv.scene.pan2Dxyzmm
    this.nv.setPan2Dxyzmm([p[0], p[1], p[2], Math.min(20, Math.max(0.5, p[3] * factor))] as any)
    this.drawOverlay()
    this.showInfo()
  }

  moveTo(mm: number[], view: string): void {
    const frac = this.nv.mm2frac(mm as any, 0, true)
    const cross = this.nv.scene.crosshairPos
    const axis = AXIS_OF[view]
    const next = [cross[0], cross[1], cross[2]]
    next[axis] = frac[axis]
    this.nv.scene.crosshairPos = next as any
    this.nv.drawScene()
  }

  /** Page the current view by n slices of the study's own grid (client side only; the server learns it later). */
  page(n: number): void {
    if (!this.nv.volumes.length) return
    const { sign } = this.nativeAxis(this.currentView)
    const d = [0, 0, 0]
    d[AXIS_OF[this.currentView]] = n * sign
    this.nv.moveCrosshairInVox(d[0], d[1], d[2])
    this.afterNavigate()
  }

  /** The stored grid's axis (0 i, 1 j, 2 k) a view steps through, and whether it runs along the RAS axis. */
  nativeAxis(view: string): { c: number; sign: number } {
    const A = (this.nv.volumes[0].hdr as any).affine as number[][]
    const r = AXIS_OF[view]
    let c = 0
    for (let k = 1; k < 3; k++) if (Math.abs(A[r][k]) > Math.abs(A[r][c])) c = k
    return { c, sign: Math.sign(A[r][c]) || 1 }
  }

  /** The shown slice of a view as the server counts it (the index along the stored grid, from 0). */
  sliceOf(view: string): { index: number; count: number } {
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
  }

  afterNavigate(): void {
    this.showInfo()
    window.clearTimeout(this.viewTimer)
    this.viewTimer = window.setTimeout(() => this.reportView(), 300)
  }

  crosshairMM(): number[] {
    const mm = this.nv.frac2mm(this.nv.scene.crosshairPos as any, 0, true)
    return [mm[0], mm[1], mm[2]]
  }

  showInfo(): void {
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
  }

  /** The active label's anchors, in the slice line: a corrected slice is kept by every re-propagation, and the user
   * saw nowhere which slices were (paging to one says so; elsewhere in that view, where they are). */
  anchorNote(view: string, index: number): string {
    const anchors = this.state?.anchors ?? []
    const active = this.state?.active ?? 1
    this.root.setAttribute('data-anchors', anchors.join(','))
    if (!anchors.length || view !== this.state?.acquisition) return ''
    if (anchors.includes(index)) return ` · anchor of label ${active}: propagation keeps this slice`
    const listed = anchors.slice(0, 8).join(', ') + (anchors.length > 8 ? ', …' : '')
    return ` · label ${active}'s anchor${anchors.length > 1 ? 's' : ''}: slice${anchors.length > 1 ? 's' : ''} ${listed}`
  }

  /** The shown plane into the page's hidden #viewer-shown box, at once: the buttons that act on the shown slice
   * (Propagate, one-shot, mask file) send it with their event. The server learns of paging 300 ms later and
   * behind queued prompts, so a button pressed right after paging ran on the slice shown before. */
  publishShown(): void {
    const box = document.querySelector('#viewer-shown textarea, #viewer-shown input') as HTMLInputElement | null
    if (!box || !this.study) return
    const text = JSON.stringify({ study: this.study, view: this.currentView, mm: this.crosshairMM() })
    if (box.value === text) return
    box.value = text
    box.dispatchEvent(new Event('input', { bubbles: true }))
  }

  reportView(): void {
    if (!this.state?.study) return
    this.enqueue({ kind: 'view', view: this.currentView, mm: this.crosshairMM() }, null, true)
  }

  requestEncode(): void {
    if (this.encodeBusy) { this.encodeAgain = true; return }
    this.encodeBusy = true
    const shown = this.statusSeq  // "Ready" is news only if no other message came while it encoded
    traceMark('encode.sent')
    fetch(this.url('encode'), { method: 'POST' })
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
  }

  // --- tools -------------------------------------------------------------------------------------
  setTool(tool: Tool): void {
    if (this.drag) this.toolDuringDrag(tool)
    this.tool = tool
    this.root.setAttribute('data-tool', tool)
    this.root.querySelectorAll('.mv-tool').forEach((b) => b.classList.toggle('mv-on', (b as HTMLElement).dataset.tool === tool))
    this.stage.style.cursor = { point: 'pointer', box: 'crosshair', brush: 'none', erase: 'none', navigate: 'default' }[tool]
    this.drawOverlay()
  }

  /** A tool's key pressed while the mouse is still down (a hurried user painting presses E to erase next): the
   * stroke drawn so far was dropped without a word, its path shown and nothing painted. A brush or eraser stroke is
   * now sent as it is, with the tool it was drawn with (the rest of the drag paints nothing); a box goes on when the
   * new tool draws boxes too (Point, Box), else it is cancelled in one line. */
  toolDuringDrag(next: Tool): void {
    const d = this.drag!
    if (next === this.tool) return
    if (this.tool === 'brush' || this.tool === 'erase') {
      this.drag = null
      this.sendStroke(d)
    } else if (next !== 'point' && next !== 'box') {
      this.drag = null
      this.showStatus('Box cancelled: the tool changed during the drag; drag it again.')
    }
  }

  /** A brush or eraser stroke's pieces (one per stretch inside the image), each one undoable edit. */
  sendStroke(d: NonNullable<Viewer['drag']>): void {
    for (const piece of [...d.done, d.stroke].filter((p) => p.length)) {
      this.prompt({ kind: this.tool, view: d.view, points: piece, radius: this.brushPx / 2 },
        { kind: 'stroke', view: d.view, mm: piece })
    }
  }

  setBrush(px: number): void {
    this.brushPx = Math.max(1, Math.min(100, Math.round(px) || 1))
    const input = this.root.querySelector('#brush-size') as HTMLInputElement | null
    if (input) input.value = String(this.brushPx)
    this.drawOverlay()
  }

  canvasXY(e: MouseEvent): [number, number] {
    const r = this.canvas.getBoundingClientRect()
    return [e.clientX - r.left, e.clientY - r.top]
  }

  /** The view and world position under a canvas point (CSS pixels), or null outside the slices. */
  pick(x: number, y: number): { view: string; mm: number[] } | null {
    const dpr = (this.nv.uiData as any).dpr || window.devicePixelRatio || 1
    const tile = this.nv.tileIndex(x * dpr, y * dpr)
    if (tile < 0) return null
    const view = VIEW_OF[this.nv.screenSlices[tile].axCorSag as number]
    if (!view) return null
    const frac = this.nv.canvasPos2frac([x * dpr, y * dpr])
    if (frac[0] < 0) return null
    const mm = this.nv.frac2mm(frac as any, 0, true)
    return { view, mm: [mm[0], mm[1], mm[2]] }
  }

  bindInput(): void {
    const stage = this.stage
    const editing = () => this.tool !== 'navigate'
    stage.addEventListener('mousedown', (e) => {
      stage.focus({ preventScroll: true })
      if ((e.button === 0 || e.button === 2) && (this.loading || !this.nv.volumes.length)) {
        // nothing shown to place it on: said at the release (a click, a box, a stroke or a window drag)
        e.stopPropagation(); e.preventDefault()
        this.unplaced = { x: e.clientX, y: e.clientY, button: e.button }
        return
      }
      const [x, y] = this.canvasXY(e)
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
    }, true)
    window.addEventListener('mousemove', (e) => {
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
        this.extendStroke(this.drag, x, y)
      }
      this.drawOverlay()
    }, true)
    window.addEventListener('mouseup', (e) => {
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
        if (hit && start) this.prompt({ kind: 'box', view: hit.view, mm: start.mm, mm2: hit.mm, new_object: true },
          { kind: 'box', view: hit.view, mm: [start.mm, hit.mm] })
        else this.showError('the box could not be placed on the image: release it over the image')
      } else if (!d.mm0.length) {  // a click beside the image
        this.showStatus(this.tool === 'point' ? 'Point: click on the image.' : 'Box: drag from one corner to the opposite one, over the image.')
      } else if (moved) {
        const first = this.boxStart(d)
        const hit = this.pick(d.x, d.y)  // released in another view's tile (3 views) or off the image: its edge
        const end = !first ? null
          : hit && hit.view === d.view ? hit : this.pickClamped(d.x, d.y, first[0], first[1], d.view)
        if (!first) this.showError('box cancelled: its first corner left the screen during the drag (another slice or '
          + 'view); drag it again')
        else if (end) this.prompt({ kind: 'box', view: d.view, mm: d.mm0, mm2: end.mm, new_object: true }, { kind: 'box', view: d.view, mm: [d.mm0, end.mm] })
        else this.showError('the box could not be placed on the image: drag it again')
      } else if (this.tool === 'point') {
        const positive = !(e.shiftKey || this.negative)
        const body: any = { kind: 'point', view: d.view, mm: d.mm0, positive }
        if (this.newObject) { body.new_object = true; this.newObject = false }
        this.prompt(body, { kind: 'point', view: d.view, mm: [d.mm0], positive })
      } else {
        this.showStatus('Box: drag from one corner to the opposite one.')
      }
      this.drawOverlay()
    }, true)
    stage.addEventListener('wheel', (e) => {
      const [x, y] = this.canvasXY(e)
      const hit = this.pick(x, y)
      if (hit) this.currentView = hit.view
      if (e.ctrlKey || e.metaKey || e.altKey) {
        e.preventDefault(); e.stopPropagation()
        this.zoom(e.deltaY < 0 ? 1.15 : 1 / 1.15)
        this.showInfo()
        return
      }
      e.preventDefault()
      window.setTimeout(() => this.afterNavigate(), 0) // NiiVue pages the slice under the mouse
    }, { capture: true, passive: false })
    stage.addEventListener('contextmenu', (e) => e.preventDefault())
    stage.addEventListener('mouseup', (e) => {
      if (e.button === 0 && this.tool === 'navigate') window.setTimeout(() => this.afterNavigate(), 0)
    })
    window.addEventListener('keydown', (e) => this.onKey(e), true)
    document.addEventListener('click', (e) => this.holdPageButton(e), true)
    document.addEventListener('mousedown', () => this.noteAlternativeShown(), true)  // the radio checked before a click
    document.addEventListener('click', (e) => this.queueAlternative(e), true)  // a radio picks on click ...
    document.addEventListener('keydown', (e) => this.queueAlternativeKey(e), true)  // ... and on arrows and Space
    document.addEventListener('mousedown', (e) => this.queueLabelChoice(e), true)  // Gradio's dropdown picks on mousedown
    document.addEventListener('keydown', (e) => this.queueLabelKey(e), true)  // ... and on Enter (ArrowDown, Enter)
    document.addEventListener('change', (e) => this.holdUpload(e), true)  // files chosen under Upload…
    // a reload or a closed tab while edits were queued lost them without a word (the queue lives in this page: only
    // the one on its way reached the server; 5 quick clicks then F5 kept 1): the browser asks first. The page's
    // first script (app.viewer.api.LEAVE_GUARD) asks the same, before Gradio's listener; this one is for a page
    // served without it (then the question stops the listeners registered after it only)
    window.addEventListener('beforeunload', (e) => this.askBeforeLeaving(e))
    // back to this tab: another tab of the session may have edited meanwhile; the page's sync shows the server's state
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.state?.study && this.inFlight === 0) this.syncPage()
      if (document.visibilityState === 'hidden') { window.clearTimeout(this.newsTimer); this.newsTimer = 0; return }
      // shown again: poll now (another tab may have opened another study: the poll names it for the notice)
      window.clearTimeout(this.newsTimer)
      this.newsTimer = 0
      if (!this.newsBusy) this.pollNews()
    })
  }

  /** A press of one of the page's buttons (AFTER_QUEUE) while the viewer's prompts are queued waits for them:
   * it is stopped here (before Gradio's own handler) and made again by :meth:`releaseHeld` when the queue is
   * empty. Presses made again are the script's own (not trusted) and pass. */
  holdPageButton(e: MouseEvent): void {
    if (!e.isTrusted) return
    const b = (e.target as Element | null)?.closest?.(AFTER_QUEUE) as HTMLElement | null
    if (!b || (b as HTMLButtonElement).disabled) return
    if (b.id === 'add-label') { e.preventDefault(); e.stopImmediatePropagation(); this.queueAddLabel(b); return }
    if (this.settled()) return
    e.preventDefault(); e.stopImmediatePropagation()
    if (!this.held.includes(b)) this.held.push(b)
    const n = this.pending.length
    const what = (b.textContent || 'that').trim()
    this.showStatus(n === 0 ? `${what}: after the label change…`
      : `${what}: after your ${n > 1 ? `${n} prompts` : 'prompt'} still on the way to the server…`)
  }

  /** Add label goes through the viewer's queue, in order with the prompts: pressed while prompts were queued, they
   * made label 1 active again after it; a click made right after it, before the page showed the new label, named
   * label 1 and went there. The press is made again when its turn comes, and the queue waits for the page to show
   * the new label (10 s at most) before the prompts behind it take their label. */
  queueAddLabel(b: HTMLElement): void {
    this.labelChanges++
    this.queue = this.queue.then(async () => {
      try {
        // the page shows the new label: a state with one label more (a state that came meanwhile for another
        // reason, the sync after the prompts, let the buttons held behind it go first; CI saw it under load)
        const count = () => this.state?.labels?.length ?? 0
        const before = count()
        if (b.isConnected) b.click()  // the page's own event (not trusted: holdPageButton lets it pass)
        const t0 = performance.now()
        while (count() <= before && performance.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 50))
      } finally {
        this.labelChanges--
        if (this.settled()) this.releaseHeld()
      }
    })
  }

  /** Leaving while edits are queued: the browser asks first. Gradio's own ``beforeunload`` listener closes its
   * connection whether or not the user stays, so a page event on its way then failed ("Connection errored out")
   * and Gradio reloaded the page 2 s later: the user who stayed was asked again for the same edits, or, with none
   * queued by then, the page reloaded under them. While asking, the listeners after it are stopped (the page's
   * first script calls this: app.viewer.api.LEAVE_GUARD); with nothing queued nobody is asked and Gradio's runs. */
  askBeforeLeaving(e: BeforeUnloadEvent): void {
    if (this.editsQueued === 0) return
    e.stopImmediatePropagation()
    e.preventDefault()
    e.returnValue = ''
  }

  /** Nothing queued: no prompt on its way and no label change waiting for the page. */
  settled(): boolean {
    return this.inFlight === 0 && this.labelChanges === 0
  }

  /** A label picked in the page's Active label box goes through the viewer's queue, in order with the prompts:
   * Gradio's own event ran before the queued prompts, and each (it names its label) made its label active again, so
   * the page went back to the old label and the next structure went into it; a click right after the pick named the
   * old label the same way. */
  queueLabelChoice(e: MouseEvent): void {
    if (!e.isTrusted || e.button !== 0) return
    const option = (e.target as Element | null)?.closest?.('#label [role="option"], #model [role="option"]')
    if (option?.closest('#model')) this.modelOptionPicked(option, e)
    else if (option) this.labelOptionPicked(option, e)
  }

  /** A label picked in the Active label box by keyboard (focus, ArrowDown, Enter: Gradio takes the option it
   * highlighted, class ``active``) goes through the viewer's queue as a mouse pick does: it ran at once, and the
   * prompts still queued made the old label active again. */
  queueLabelKey(e: KeyboardEvent): void {
    if (!e.isTrusted || e.key !== 'Enter' || e.isComposing) return
    const box = (e.target as Element | null)?.closest?.('#label, #model')
    if (box?.id === 'model') { this.modelKey(box, e); return }
    const option = box?.querySelector('[role="option"].active')
    if (option) this.labelOptionPicked(option, e)
  }

  /** Enter in the Model box: the option Gradio would pick goes through the queue (modelOptionPicked). Gradio
   * filters the list as keys are typed, and at Enter picks the first option whose label holds the text when the
   * highlighted one does not (text that came without keys, pasted with the mouse, leaves an earlier highlight: that
   * option was sent). Text that matches no model in the open list picked nothing, and the box snapped back when it
   * lost focus, without a word: the status line now says so. */
  modelKey(box: Element, e: KeyboardEvent): void {
    const input = e.target as HTMLInputElement
    const typed = (input.value ?? '').trim()
    const label = (o: Element) => (o.getAttribute('aria-label') || o.textContent || '').trim()
    // the text of the model shown (nothing typed: the arrows move over the whole list) filters nothing
    const selected = box.querySelector('[role="option"].selected')
    const filter = selected && label(selected) === typed ? '' : typed.toLowerCase()
    const holds = (o: Element) => label(o).toLowerCase().includes(filter)
    const active = box.querySelector('[role="option"].active')
    const option = active && holds(active) ? active : [...box.querySelectorAll('[role="option"]')].find(holds)
    if (option) { this.modelOptionPicked(option, e); return }
    if (!filter || !box.querySelector('[role="listbox"]')) return  // nothing typed, or the list is closed
    e.preventDefault(); e.stopImmediatePropagation()
    const shown = typed.length > 40 ? `${typed.slice(0, 40)}…` : typed
    this.showError(`Model: no model in the list matches "${shown}", so the model in use stays: pick one from the list`)
  }

  /** A model picked in the Model box, by mouse or keyboard, is the viewer's own action (kind ``model``,
   * app.viewer.actions.choose_model), sent through the queue after the prompts made before it: Gradio's event
   * switched the model at once (a model change starts a new object), so of a box and 3 quick clicks then a model
   * pick, 1 click refined the box and the other 2 began a second object on the new model. Gradio's handler never
   * sees the pick (session 15 replayed it through the list when its turn came, and under load the replay was lost
   * without a word); the answer says which model is in use, and the page's sync after it shows it in the box. The
   * option's label is sent as shown: the server knows which model it names (app.model_catalog.name_of). */
  modelOptionPicked(option: Element, e: Event): void {
    const shown = option.getAttribute('aria-label') || (option.textContent ?? '').replace(/^\s*✓?\s*/, '').trim()
    if (!shown) return
    e.preventDefault(); e.stopImmediatePropagation()
    ;(document.activeElement as HTMLElement | null)?.blur?.()  // closes the list; the sync then shows the model
    const n = this.pending.length
    if (n) this.showStatus(`Model: after your ${n > 1 ? `${n} prompts` : 'prompt'} still on the way to the server…`)
    this.enqueue({ kind: 'model', model: shown })
  }

  /** The pick of one option of the Active label box, by mouse or keyboard: it goes through the queue (Gradio's own
   * handler never sees it). */
  labelOptionPicked(option: Element, e: Event): void {
    const text = (option.textContent ?? '').replace(/^\s*✓?\s*/, '').trim()  // "2 · label 2" (controller.view_model)
    const d = (this.state?.labels ?? []).find((x) => `${x.value} · ${x.name}` === text)
    if (!d) return
    e.preventDefault(); e.stopImmediatePropagation()
    ;(document.activeElement as HTMLElement | null)?.blur?.()  // closes the list; the page shows the choice after the sync
    this.enqueue({ kind: 'active', label: d.value })
  }

  /** An alternative picked in *Alternatives of the first click* (a click on its radio; keys: queueAlternativeKey) is
   * the viewer's own action (kind ``alternative``), sent through the queue after the prompts made before it, with
   * the first click the list was shown for (the page's state: the list and the state come in one page, so a pick
   * made as a new page shows is judged by that page). Gradio's event reached the server before or after clicks still
   * queued, as it happened: a refinement click queued before it refined the alternative instead of the mask it was
   * made on, and after N and a first click on another structure it swapped that structure's mask for an alternative
   * of the first one. The server refuses a pick whose list is no longer the current first click's; the page's sync
   * after the answer shows the choice. */
  queueAlternative(e: MouseEvent): void {
    if (!e.isTrusted) return
    const row = (e.target as Element | null)?.closest?.('#alternatives label')
    const radio = row?.querySelector('input[type="radio"]') as HTMLInputElement | null
    if (!row || !radio) return
    // a click on the radio itself comes after the browser has checked it (its activation runs first, and is undone
    // when the click is cancelled), so whether it was the one applied is read from the mousedown before it; a click
    // on the row's text comes before the radio is checked
    const applied = e.target === radio ? this.alternativeShown === radio : radio.checked
    if (!applied) this.alternativePicked(row, e)  // the one applied: nothing to change
  }

  /** Which radio of the list was checked when a mouse button went down (``queueAlternative`` reads it). */
  noteAlternativeShown(): void {
    const all = [...document.querySelectorAll('#alternatives input[type="radio"]')] as HTMLInputElement[]
    this.alternativeShown = all.find((r) => r.checked) ?? null
  }

  /** The list's keys: an arrow checks the next or previous radio (the browser's own move fires no click, and
   * Gradio's event took it), Space the focused one. The move is made here: focus goes there, the pick is queued, and
   * the page's sync after the answer checks it. */
  queueAlternativeKey(e: KeyboardEvent): void {
    if (!e.isTrusted || e.isComposing || e.altKey || e.ctrlKey || e.metaKey) return
    const radio = (e.target as Element | null)?.closest?.('#alternatives input[type="radio"]') as HTMLInputElement
      | null
    if (!radio) return
    const all = [...document.querySelectorAll('#alternatives input[type="radio"]')] as HTMLInputElement[]
    const at = all.indexOf(radio)
    const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, ' ': 0 }[e.key]
    if (at < 0 || step === undefined) return
    const to = all[(at + step + all.length) % all.length]
    e.preventDefault(); e.stopImmediatePropagation()
    to.focus()
    const row = to.closest('label')
    if (row && !to.checked) this.alternativePicked(row, e)
  }

  /** One row of the list picked (its label ``row``), by mouse or keyboard: queued as the ``alternative`` action. */
  alternativePicked(row: Element, e: Event): void {
    const which = parseInt((row.textContent ?? '').trim(), 10)  // "2 (IoU 0.87, box)" (controller.view_model)
    if (!Number.isFinite(which)) return
    e.preventDefault(); e.stopImmediatePropagation()  // the radio stays as the page shows it until the answer
    const o = this.shownState()?.object  // the page's, as the list: the viewer reads it 100 ms later
    const body: any = { kind: 'alternative', alternative: which }
    if (o && o.points.length === 1) body.first = o.points[0].mm
    const n = this.pending.length
    if (n) this.showStatus(`Alternative ${which}: after your ${n > 1 ? `${n} prompts` : 'prompt'} still on the way ` +
      'to the server…')
    this.enqueue(body)
  }

  /** The state of the page shown now (``#viewer-state``), read at once: the page's lists come with it. */
  shownState(): State | null {
    const text = document.querySelector('#viewer-state [data-state]')?.getAttribute('data-state')
    try { return text ? JSON.parse(text) : null } catch { return null }
  }

  /** Files chosen under Upload… while prompts are queued wait for them, as the page's buttons do: the upload opened
   * its study at once, and the clicks still queued arrived after it, refused as made on a study no longer open ("another
   * tab opened ..."): 3 quick clicks then an upload kept 1. The file chooser opens on the user's own press (not held);
   * the choice (the input's change, before Gradio's handler) is stopped here and made again by :meth:`releaseHeld`:
   * the input still holds the files. */
  holdUpload(e: Event): void {
    const input = e.target as HTMLInputElement | null  // Gradio's UploadButton: the file input just before #upload
    if (input?.type !== 'file' || input.nextElementSibling?.id !== 'upload') return
    if (input === this.replaying || this.settled()) return
    e.stopImmediatePropagation()
    if (!this.heldUploads.includes(input)) this.heldUploads.push(input)
    const n = this.pending.length
    this.showStatus(n === 0 ? 'Upload: after the label change…'
      : `Upload: after your ${n > 1 ? `${n} prompts` : 'prompt'} still on the way to the server…`)
  }

  releaseHeld(): void {
    for (const b of this.held.splice(0)) if (b.isConnected) b.click()
    for (const input of this.heldUploads.splice(0)) {
      if (!input.isConnected || !input.files?.length) continue
      this.replaying = input  // Gradio's own handler takes it (holdUpload lets it pass)
      try { input.dispatchEvent(new Event('change', { bubbles: true })) } finally { this.replaying = null }
    }
  }

  /** A brush stroke's next mouse position. Leaving the image ends the piece at the edge; coming back starts
   * another piece at the edge. The stroke was one polyline of its inside points, so leaving on one side and
   * coming back on another painted a straight line across the image where the brush never went. */
  extendStroke(d: NonNullable<Viewer['drag']>, x: number, y: number): void {
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
  }

  /** Where the box being dragged begins on the screen now: its first corner's millimetres through the current
   * mapping, not the screen point pressed. M (the layout), a zoom or the wheel during the drag move that corner (or
   * take its slice off the screen: null), and the dashed box stayed at the old point while the release made a box
   * from the corner first pressed; released over another view, it was clamped from that stale point. A box begun
   * beside the image has no corner yet: the point pressed. */
  boxStart(d: NonNullable<Viewer['drag']>): [number, number] | null {
    return d.mm0.length ? this.toCanvas(d.mm0, d.view) : [d.x0, d.y0]
  }

  /** The image's edge between a canvas point inside it and one outside (bisection on the segment). */
  edgeBetween(xi: number, yi: number, xo: number, yo: number, view: string): { view: string; mm: number[] } | null {
    const inside = (t: number) => this.pick(xi + t * (xo - xi), yi + t * (yo - yi))?.view === view
    if (!inside(0)) return null
    let a = 0, b = 1
    for (let i = 0; i < 16; i++) { const m = (a + b) / 2; if (inside(m)) a = m; else b = m }
    return this.pick(xi + a * (xo - xi), yi + a * (yo - yi))
  }

  /** A box dragged past the image's edge (into the tile's letterbox or off the canvas): its corner clamped to
   * the image, per screen axis, from the drag's start (inside). Clamping to the tile alone left the corner in
   * the letterbox, where nothing is picked, and the box was dropped without a word. */
  pickClamped(x: number, y: number, x0: number, y0: number, view: string): { view: string; mm: number[] } | null {
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
  }

  /** The drag's window goes to the server 250 ms after the release (a second drag meanwhile replaces it): the
   * window dragged (``windowOwn``), not the volume's, which a state could have changed under the drag. */
  onWindowDragged(): void {
    const own = this.windowOwn
    if (!own || !this.nv.volumes[0] || this.state?.rgb) { this.windowOwn = null; return }
    this.applyWindow(own)
    this.showInfo()
    window.clearTimeout(this.windowTimer)
    this.windowTimer = window.setTimeout(() => this.enqueue({ kind: 'window', level: own.level, width: own.width }, null, true), 250)
  }

  /** A press on the stage while no study is shown (none open, or one still on its way into the viewer): there is
   * nothing to place it on, and before it was dropped without a word (the line kept saying "Loading ...", the user
   * waited for a mask that never came). One line says so; a study's own line replaces it once it is shown. */
  sayUnplaced(moved: boolean, button: number): void {
    const painting = this.tool === 'brush' || this.tool === 'erase'
    const what = button === 2 ? 'window drag' : painting ? 'stroke' : moved && this.tool !== 'navigate' ? 'box' : 'click'
    if (!this.loading && !this.state?.study) {
      this.showStatus('No study is open: open a sample or upload a study, then click on it.')
      return
    }
    const name = this.state?.name ?? 'The study'
    const again = what === 'click' ? 'click' : 'do it'
    if (!this.loading && this.nv.volumes.length) {  // shown between the press and the release
      this.showError(`your ${what} began while ${name} was still loading and was not placed: ${again} again.`)
      return
    }
    if (!this.loading) {  // its load failed (said then): nothing is loading
      this.showError(`${name} is not in the viewer (its loading failed): open it again; your ${what} was not placed.`)
      return
    }
    this.showError(`${name} is still loading: your ${what} was not placed; ${again} again once it is shown.`)
    this.loadRefusal = this.statusSeq
  }

  onKey(e: KeyboardEvent): void {
    const t = e.target as HTMLElement | null
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable)) return
    if (!this.state?.study) return
    const k = e.key
    const ctrl = e.ctrlKey || e.metaKey
    let handled = true
    if (k === 'Escape') {
      if (this.drag) {
        const stroke = this.tool === 'brush' || this.tool === 'erase'
        this.drag = null; this.showStatus(stroke ? 'Stroke cancelled.' : 'Box cancelled.'); this.drawOverlay()
      } else handled = false
    } else if (ctrl && k.toLowerCase() === 'z') this.enqueue({ kind: 'undo' })
    else if (ctrl && k.toLowerCase() === 'y') this.enqueue({ kind: 'redo' })
    else if (ctrl) handled = false
    else if (k === 'ArrowUp' || k === 'PageUp') this.page(1)
    else if (k === 'ArrowDown' || k === 'PageDown') this.page(-1)
    else if (k === 'p' || k === 'P') this.setTool('point')
    else if (k === 'b' || k === 'B') this.setTool('box')
    else if (k === 'r' || k === 'R') this.setTool('brush')
    else if (k === 'e' || k === 'E') this.setTool('erase')
    else if (k === 'v' || k === 'V') this.setTool('navigate')
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
  }

  // --- labels legend --------------------------------------------------------------------------
  /** The label the user made active last: a label choice still on its way, or the state's. H right after a pick
   * in the legend hid the label active before it (the pick's answer had not come), not the one just picked. */
  shownActive(): number {
    return this.chosen?.label ?? this.state?.active ?? 1
  }

  toggleHidden(v: number): void {
    if (this.hidden.has(v)) this.hidden.delete(v); else this.hidden.add(v)
    this.applyLabelLook()
  }

  /** Rebuilt only when the labels changed (their values, names, colours): every page sync and label look calls it,
   *  and a rebuild between a mouse press and its release on a label's name replaced the button, so the browser sent
   *  no click and the pick was lost (the flaky label-pick e2e test of session 17). The active, hidden and locked
   *  marks change in place (markLegend): a rebuild for a new active label lost a second pick pressed while the
   *  first one's answer came (session 18). */
  renderLegend(): void {
    const labels = this.state?.labels ?? []
    const key = JSON.stringify(labels)
    if (key !== this.legendKey) {
      this.legendKey = key
      this.legend.innerHTML = ''
      for (const d of labels) this.legend.append(this.legendRow(d))
    }
    this.markLegend()
  }

  /** One label's row of the legend: its colour, its name (a click makes it the active label), hide and lock. */
  legendRow(d: LabelDef): HTMLElement {
    const row = el('div', { class: 'mv-label', 'data-value': String(d.value) })
    const sw = el('span', { class: 'mv-swatch' })
    sw.style.background = d.colour
    const name = el('button', { class: 'mv-name', type: 'button', title: `${d.name}: make it the active label` }, `${d.value} · ${d.name}`)
    name.addEventListener('click', () => this.enqueue({ kind: 'active', label: d.value }))
    const eye = el('button', { class: 'mv-icon mv-eye', type: 'button' })
    eye.addEventListener('click', () => this.toggleHidden(d.value))
    const lock = el('button', { class: 'mv-icon mv-lock', type: 'button', title: 'Locked labels cannot be edited' })
    lock.addEventListener('click', () => {
      if (this.locked.has(d.value)) this.locked.delete(d.value); else this.locked.add(d.value)
      this.renderLegend()
    })
    row.append(sw, name, eye, lock)
    return row
  }

  /** The legend's marks, set on the buttons in place: the active label, and each label's hide/show and lock. */
  markLegend(): void {
    const active = this.state?.active
    for (const row of this.legend.querySelectorAll<HTMLElement>('.mv-label')) {
      const v = Number(row.dataset.value)
      row.classList.toggle('mv-active', v === active)
      const set = (b: Element | null, text: string, title?: string) => {
        if (b && b.textContent !== text) b.textContent = text
        if (b && title !== undefined && b.getAttribute('title') !== title) b.setAttribute('title', title)
      }
      const hidden = this.hidden.has(v)
      set(row.querySelector('.mv-eye'), hidden ? 'show' : 'hide', hidden ? 'Show' : 'Hide')
      set(row.querySelector('.mv-lock'), this.locked.has(v) ? 'unlock' : 'lock')
    }
  }

  // --- prompts: the queue ---------------------------------------------------------------------
  /** A prompt for the active label, into the queue. With a label change queued before it the label is taken when it
   * leaves, and so is the lock check (the server refuses a locked label: ``locked`` goes with it): checked here
   * against the label active before the change, a click right after leaving a locked label was refused. */
  prompt(body: any, mark: Pending): void {
    const active = this.state?.active ?? 1
    if (this.labelChanges === 0 && this.locked.has(active)) {
      this.showError(`label ${active} is locked: unlock it to edit it`)
      return
    }
    if (this.labelChanges > 0) body.labelLate = true  // a label choice is queued before it: the label active then
    else body.label = active
    body.locked = [...this.locked]
    this.pending.push(mark)
    this.drawOverlay()
    this.enqueue(body, mark)
  }

  enqueue(body: any, pending: Pending | null = null, quiet = false): void {
    if (!this.state?.study && body.kind !== 'model') return  // a model is the session's: picked also with no study
    body.study = this.study  // the study shown now: the server refuses a prompt if another opened before it arrived
    const t0 = performance.now()
    if (!quiet) this.readyWanted = false  // the prompt's own answer is the news now
    this.inFlight++
    const edit = REVISION_KINDS.has(body.kind)
    if (edit) this.editsQueued++
    const choice = body.kind === 'active'  // a label choice: the prompts queued behind it take their label after it
    if (choice) { this.labelChanges++; this.chosen = body }
    this.root.setAttribute('data-busy', String(this.inFlight))
    const id = String(++traceSeq)
    const asks = SUGGEST_KINDS.has(body.kind) // prompts and undo/redo answer with the next suggestion when asked
    if (this.suggestOn && asks) body.suggest = true
    traceMark('action.queued', { id, kind: body.kind })
    this.queue = this.queue.then(async () => {
      // the label map this tab holds as the action leaves: a lost answer is judged against it
      const sent = { rev: this.rev >= 0 ? this.rev : this.state?.rev ?? -1, boot: this.revBoot ?? this.state?.boot ?? null }
      if (body.labelLate) { delete body.labelLate; body.label = this.state?.active ?? 1 }
      let taken = false
      try {
        traceMark('action.sent', { id, kind: body.kind })
        const r = await fetch(this.url('action'), {
          method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Trace-Id': id }, body: JSON.stringify(body),
        })
        if (!r.ok) {
          const refused = await this.refusalOf(r)  // the server's own message: it refused, nothing changed
          if (refused !== null) this.showError(refused)
          else await this.answerLost(body.kind, `answer ${r.status} without the server's message`, sent)
          return
        }
        const a: Answer = await r.json()
        const answered = performance.now() - t0
        traceMark('action.received', { id, kind: body.kind })
        this.pagesBefore(a)
        await this.apply(a, quiet)
        taken = a.ok
        if (choice && a.ok && this.state) this.state.active = body.label  // the page shows it after its sync
        // another model: its "Ready" once the shown slice is encoded with it, unless prompts queued behind say more
        if (body.kind === 'model' && a.ok && this.inFlight === 1 && this.state?.study) this.readyWanted = true
        if (body.kind === 'model' && a.ok) this.root.setAttribute('data-model', a.model ?? '')
        if (asks || EDIT_KINDS.has(body.kind)) this.suggestion = this.suggestOn ? a.suggest ?? null : null
        traceMark('action.applied', { id, kind: body.kind })
        if (pending) { this.promptTimes.push(performance.now() - t0); this.answerTimes.push(answered) }
      } catch (e) {
        await this.answerLost(body.kind, failure(e), sent)
      } finally {
        if (pending) this.pending = this.pending.filter((p) => p !== pending)
        this.inFlight--
        if (edit) this.editsQueued--
        if (choice) this.labelChanges--
        if (this.chosen === body) this.chosen = null  // answered (the state says it) or refused (the old one stays)
        // the drag's window answered (the pages after it carry it) or refused or lost (the server's is shown again)
        if (body.kind === 'window' && this.windowOwn?.level === body.level && this.windowOwn?.width === body.width) {
          this.windowOwn = null
          if (!taken && this.state?.window) this.applyWindow(this.state.window)
        }
        this.root.setAttribute('data-busy', String(this.inFlight))
        this.drawOverlay()
        // what the run of actions asks for once the queue is empty: asked by the last one only, a window drag then
        // paging while a click was on its way never reached the page (its Window, Level and Width boxes kept the old
        // window for good, and the label table missed the click): the paging, last, syncs nothing
        if (!quiet || body.kind === 'window') this.syncWanted = true
        if (body.kind === 'view' || body.kind === 'point' || body.kind === 'box') this.encodeWanted = true
        if (this.inFlight === 0) {
          if (this.state && this.labelsNewer(this.state.boot, this.state.rev) && this.study === this.state.study) this.reloadLabels()
          if (this.syncWanted || this.tableStale) { this.syncWanted = false; this.tableStale = false; this.syncPage() }
          if (this.encodeWanted || this.readyWanted) { this.encodeWanted = false; this.requestEncode() }
          if (this.labelChanges === 0) this.releaseHeld()  // else after the label change (queueAddLabel)
        }
      }
    })
  }

  /** A failed answer's own message (a 4xx/5xx of this server: it says what it refused), or null when the answer
   * has none (a proxy's error page, a body cut short): then whether the action was applied is not known. */
  async refusalOf(r: Response): Promise<string | null> {
    try { const a = await r.json(); return typeof a?.error === 'string' && a.error ? a.error : null } catch { return null }
  }

  /** The action's answer was lost (connection dropped, a proxy's timeout): the server may have applied it all the
   * same. Saying "not applied" then made the user prompt twice (or believe work was missing), so the server is asked
   * first: its state (GET /state waits for the session's lock, so an action still running there ends first) against
   * the label map this tab held when it sent the action. A label edit moves the revision; the labels are then
   * fetched again and the user told it was applied. Only a revision that stayed means "not applied". (Another tab
   * of the session editing in the same moment would read as this action's: the server keeps no action ids.) */
  async answerLost(kind: string, why: string, sent: { rev: number; boot: string | null }): Promise<void> {
    const what = SAID[kind] ?? 'action'
    if (!REVISION_KINDS.has(kind)) {
      this.showError(`the server did not answer (${why}); your ${what} may not have been applied`)
      return
    }
    let s: State
    try {
      const r = await fetch(this.url('state'), { cache: 'no-store' })
      if (!r.ok) throw new Error(`state: ${r.status}`)
      s = await r.json()
    } catch (e) {
      const again = failure(e)
      this.showError(`the server did not answer (${why}), nor when asked again${again === why ? '' : ` (${again})`}: ` +
        `whether your ${what} was applied is not known`)
      return
    }
    traceMark('action.lost', { kind, rev: s.rev, sent: sent.rev })
    const sameBoot = (s.boot ?? null) === sent.boot
    if (s.study === this.study && sameBoot && sent.rev >= 0 && s.rev > sent.rev) {
      if ('object' in s) this.object = s.object ?? null
      this.rev = -1
      await this.reloadLabels()
      this.showStatus(`Your ${what} was applied (its answer was lost on the way: ${why}); the labels shown are the server's.`)
    } else if (sameBoot && s.rev === sent.rev) {
      this.showError(`the server did not answer (${why}); your ${what} was not applied`)
    } else {
      if (s.study === this.study) { this.rev = -1; await this.reloadLabels() }  // restarted: show what it holds
      this.showError(`the server did not answer (${why}) and has changed since: check whether your ${what} is there`)
    }
  }

  async errorOf(r: Response): Promise<string> {
    try { const a = await r.json(); return a.error || `request failed (${r.status})` } catch { return `request failed (${r.status})` }
  }

  async apply(a: Answer, quiet: boolean): Promise<void> {
    if (!a.ok) { this.showError(a.error || 'failed'); return }
    // the server's map had changed since the one shown (another tab of this session edited it): the patch is one
    // plane, so the rest is fetched again; before, this tab went on showing the map without the other's edits
    // (or the map shown was counted by another server process: restarted since, its revisions are another count)
    const stale = a.base !== undefined && this.rev >= 0 && (a.base !== this.rev || (a.boot ?? null) !== this.revBoot)
    if (a.patch && this.labelsVol) this.writePatch(a.patch)
    if (a.reload || stale) { this.rev = -1; await this.reloadLabels() }
    if (a.rev !== undefined && !a.reload && !stale) {
      this.rev = a.rev
      this.revBoot = a.boot ?? null
      this.root.setAttribute('data-rev', String(a.rev))
      this.markDownload()
    }
    if ('object' in a) this.object = a.object ?? null
    // another tab renamed or recoloured a label: this page's table (legend, label box) is refreshed by its sync
    if (a.table !== undefined && this.state?.table !== undefined && a.table !== this.state.table) this.tableStale = true
    if (a.status && !quiet) this.showStatus(a.status, a.at !== undefined && a.boot ? { boot: a.boot, seq: a.at } : undefined)
    this.drawOverlay()
  }

  writePatch(p: { axis: number; index: number; shape: number[]; data: string }): void {
    const vol = this.labelsVol!
    const values = new Uint16Array(base64Bytes(p.data).buffer)
    const img = vol.img as any
    const hdr = vol.hdr!
    const ni = hdr.dims[1], nj = hdr.dims[2]
    const [a, b] = p.shape
    if (p.axis === 0) {
      img.set(values, p.index * ni * nj)
    } else if (p.axis === 1) {
      for (let k = 0; k < a; k++) for (let i = 0; i < b; i++) img[k * ni * nj + p.index * ni + i] = values[k * b + i]
    } else {
      for (let k = 0; k < a; k++) for (let j = 0; j < b; j++) img[k * ni * nj + j * ni + p.index] = values[k * b + j]
    }
    if (this.slices.active) {
      // the viewer's label texture: this plane alone goes to the GPU, then one frame
      this.slices.uploadPlane(p.axis, p.index, values)
      this.nv.drawScene()
    } else this.refreshLabels()
  }

  /** Upload the patched labels and redraw: the label layer alone (NiiVue's refreshLayers on layer 1). Its
   * texture does not depend on the image layer's, so redoing that one too (updateGLVolume: the image's
   * pass and its 3D gradient, most of the cost) gave the same pixels (checked: canvas equal to a full
   * updateGLVolume after clicks, in one view, three views and outline mode). */
  refreshLabels(): void {
    if (this.nv.volumes[1] !== this.labelsVol) { this.nv.updateGLVolume(); return }
    this.nv.refreshLayers(this.labelsVol!, 1)
    this.nv.drawScene()
  }

  /** A page sync was asked less than 5 s ago and no page newer than the answers has come since. */
  syncOnItsWay(): boolean {
    return this.syncAsked > 0 && performance.now() - this.syncAsked < 5_000
  }

  syncPage(): void {
    this.syncAsked = performance.now()
    traceMark('sync.click')
    const b = document.querySelector('#viewer-sync') as HTMLButtonElement | null
    b?.click()
  }

  // --- overlay: markers, the box being drawn, the brush --------------------------------------
  toCanvas(mm: number[], view: string): [number, number] | null {
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
  }

  drawOverlay(): void {
    const o = this.overlay
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight
    const dpr = window.devicePixelRatio || 1
    if (o.width !== Math.round(w * dpr) || o.height !== Math.round(h * dpr)) {
      o.width = Math.round(w * dpr); o.height = Math.round(h * dpr)
    }
    const g = o.getContext('2d')!
    g.setTransform(dpr, 0, 0, dpr, 0, 0)
    g.clearRect(0, 0, w, h)
    if (!this.nv.volumes.length) return
    const point = (mm: number[], view: string, positive: boolean, pending: boolean) => {
      const p = this.toCanvas(mm, view)
      if (!p) return
      g.beginPath(); g.arc(p[0], p[1], 5, 0, 2 * Math.PI)
      g.fillStyle = positive ? 'rgb(40,220,40)' : 'rgb(240,40,40)'
      g.globalAlpha = pending ? 0.6 : 1
      g.fill(); g.globalAlpha = 1
      g.lineWidth = 1.5; g.strokeStyle = pending ? '#ffff00' : '#ffffff'; g.stroke()
    }
    const poly = (corners: number[][], view: string, colour: string, dashed: boolean) => {
      const ps = corners.map((c) => this.toCanvas(c, view))
      if (ps.some((p) => !p)) return
      g.beginPath(); ps.forEach((p, i) => (i ? g.lineTo(p![0], p![1]) : g.moveTo(p![0], p![1]))); g.closePath()
      g.setLineDash(dashed ? [5, 4] : []); g.lineWidth = 2; g.strokeStyle = colour; g.stroke(); g.setLineDash([])
    }
    const sg = this.suggestion
    if (sg) {
      const p = this.toCanvas(sg.mm, sg.view)
      if (p) {
        g.beginPath(); g.arc(p[0], p[1], 9, 0, 2 * Math.PI)
        g.setLineDash([3, 3]); g.lineWidth = 2; g.strokeStyle = '#ffd000'; g.stroke(); g.setLineDash([])
        g.font = 'bold 13px sans-serif'; g.fillStyle = '#ffd000'; g.textAlign = 'left'; g.textBaseline = 'middle'
        g.fillText(sg.positive ? '+' : '\u2212', p[0] + 12, p[1])
      }
    }
    const obj = this.object
    if (obj) {
      if (obj.box) poly(obj.box, obj.view, 'rgb(0,170,255)', false)
      for (const p of obj.points) point(p.mm, obj.view, p.positive, false)
    }
    for (const p of this.pending) {
      if (p.kind === 'point') point(p.mm[0], p.view, p.positive !== false, true)
      else if (p.kind === 'box') {
        const a = this.toCanvas(p.mm[0], p.view), b = this.toCanvas(p.mm[1], p.view)
        if (a && b) { g.setLineDash([5, 4]); g.strokeStyle = '#ffff00'; g.lineWidth = 2; g.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]); g.setLineDash([]) }
      } else {
        g.strokeStyle = 'rgba(255,255,0,0.6)'; g.lineWidth = 2; g.beginPath()
        p.mm.forEach((m, i) => { const c = this.toCanvas(m, p.view); if (c) (i ? g.lineTo(c[0], c[1]) : g.moveTo(c[0], c[1])) }); g.stroke()
      }
    }
    const d = this.drag
    const first = d ? this.boxStart(d) : null
    if (d && first && (this.tool === 'point' || this.tool === 'box') && Math.hypot(d.x - d.x0, d.y - d.y0) >= DRAG_PX) {
      g.setLineDash([6, 4]); g.strokeStyle = 'rgb(0,170,255)'; g.lineWidth = 2
      g.strokeRect(first[0], first[1], d.x - first[0], d.y - first[1]); g.setLineDash([])
    }
    if ((this.tool === 'brush' || this.tool === 'erase') && this.hover) {
      const r = this.brushRadiusCss(this.hover[0], this.hover[1])
      g.beginPath(); g.arc(this.hover[0], this.hover[1], Math.max(2, r), 0, 2 * Math.PI)
      g.setLineDash(this.tool === 'erase' ? [4, 3] : []); g.lineWidth = 1.5
      g.strokeStyle = this.tool === 'erase' ? '#ff6060' : '#ffff00'; g.stroke(); g.setLineDash([])
      if (d) {
        g.strokeStyle = this.tool === 'erase' ? 'rgba(255,96,96,0.5)' : 'rgba(255,255,0,0.5)'
        g.lineWidth = 2 * r; g.lineCap = 'round'; g.beginPath()
        for (const piece of [...d.done, d.stroke]) {
          g.beginPath()
          piece.forEach((m, i) => { const c = this.toCanvas(m, d.view); if (c) (i ? g.lineTo(c[0], c[1]) : g.moveTo(c[0], c[1])) })
          g.stroke()
        }
        g.lineCap = 'butt'
      }
    }
  }

  brushRadiusCss(x: number, y: number): number {
    const dpr = (this.nv.uiData as any).dpr || 1
    const tile = this.nv.tileIndex(x * dpr, y * dpr)
    if (tile < 0) return 0
    const s = this.nv.screenSlices[tile]
    const pix = (this.nv.volumes[0] as any).pixDimsRAS as number[] | undefined
    const mmPerVoxel = pix ? Math.min(pix[1], pix[2], pix[3]) : 1
    const pxPerMM = s.leftTopWidthHeight[2] / s.fovMM[0] / dpr
    return (this.brushPx / 2) * mmPerVoxel * pxPerMM
  }

  // --- messages ---------------------------------------------------------------------------------
  /** A message replaces the one shown, except an error the user has not acted on since: a late answer,
   * a background "Ready" or a propagation's progress never hides it (issue 19). A server message (``news``: its
   * place in the news order) older than one already shown is dropped: the page's warm-up says "Opened ... Ready"
   * when its encode ends, which came after the answer of a click made meanwhile and replaced it. A message of
   * another server process (restarted) is taken as newer: its count starts again. */
  showStatus(text: string, news?: News): void {
    if (news !== undefined) {
      const shown = this.newsShown
      if (shown && shown.boot === news.boot && news.seq < shown.seq) return
      this.newsShown = news
    }
    if (this.errorAt >= 0 && this.errorAt === this.userActs) return
    this.errorAt = -1
    this.statusSeq += 1
    this.statusLine.textContent = text
    this.statusLine.classList.remove('mv-error')
  }

  /** The slice's "Ready" joins the message shown instead of replacing it ("Review: slice 2 ..." stays
   * readable after the viewer moved there and encoded it); an error stays as it is. */
  addReady(ready: string): void {
    if (this.statusLine.classList.contains('mv-error')) return
    const text = (this.statusLine.textContent ?? '').trim()
    // already said, by the viewer or by the page's warm-up ("... Ready: the slice is encoded (backend ...)."):
    // said twice, the status took three lines and pushed the page past 900 px (session 12)
    if (/Ready: the slice is encoded(?: \([^)]*\))?\.?$/.test(text)) return
    this.showStatus(text ? `${text} · ${ready}` : ready)
  }

  showError(text: string): void {
    this.errorAt = this.userActs
    this.statusSeq += 1
    this.statusLine.textContent = `⚠ ${text}`
    this.statusLine.classList.add('mv-error')
  }
}

function mount(): void {
  const root = document.getElementById('medseg-viewer')
  if (!root || root.dataset.mounted) return
  root.dataset.mounted = '1'
  const viewer = new Viewer(root)
  ;(window as any).medsegViewer = viewer
  viewer.start().catch((e) => viewer.showError(`the viewer could not start: ${e}`))
}

const observer = new MutationObserver(() => mount())
observer.observe(document.documentElement, { childList: true, subtree: true })
mount()
