// The viewer's state and its start: every field the modules below read or change lives here, in one place.
// Its methods are grouped by job in the modules mixed in at the end (news.ts, page_state.ts, ...).
import { Niivue, NVImage, SHOW_RENDER, MULTIPLANAR_TYPE, DRAG_MODE } from '@niivue/niivue'
import { SliceShader } from './slice_shader'
import { WheelPager } from './wheel'
import type { Drag, News, ObjectMarks, Pending, State, Suggested, Tool, Window, WindowDrag } from './types'
import { buildPanel } from './panel'
import { NEWS_MS, newsMethods, type NewsMethods } from './news'
import { pageStateMethods, type PageStateMethods } from './page_state'
import { downloadMarkMethods, type DownloadMarkMethods } from './download_mark'
import { studyLoaderMethods, type StudyLoaderMethods } from './study_loader'
import { labelLayerMethods, type LabelLayerMethods } from './label_layer'
import { windowLevelMethods, type WindowLevelMethods } from './window_level'
import { navigationMethods, type NavigationMethods } from './navigation'
import { geometryMethods, type GeometryMethods } from './geometry'
import { gestureMethods, type GestureMethods } from './gestures'
import { pointerMethods, type PointerMethods } from './pointer'
import { keyboardMethods, type KeyboardMethods } from './keyboard'
import { pageButtonMethods, type PageButtonMethods } from './page_buttons'
import { choiceMethods, type ChoiceMethods } from './choices'
import { legendMethods, type LegendMethods } from './legend'
import { actionQueueMethods, type ActionQueueMethods } from './action_queue'
import { answerMethods, type AnswerMethods } from './answers'
import { overlayMethods, type OverlayMethods } from './overlay'
import { statusLineMethods, type StatusLineMethods } from './status_line'
import { touchMethods, type TouchMethods, type TouchGesture } from './touch'
import { keyCursorMethods, type KeyCursorMethods, type KeyMark } from './key_cursor'

export class Viewer {
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
  lastPositive: boolean | null = null  // the kind of the last point placed: a double-click's second press is it again
  newObject = false
  three = false
  outline = false
  opacity = 0.45
  brushPx = 8
  wheel = new WheelPager()  // the wheel's slices, from its deltas (a touchpad's small ones summed)
  hidden = new Set<number>()
  locked = new Set<number>()
  currentView = 'axial'
  object: ObjectMarks | null = null
  suggestOn = false // issue 18: mark where the answer is least sure (opt-in: docs/clicks.md)
  suggestion: Suggested | null = null
  pending: Pending[] = []
  inFlight = 0
  queue: Promise<void> = Promise.resolve()
  drag: Drag | null = null
  hover: [number, number] | null = null
  touch: TouchGesture | null = null  // the fingers on the image (touch.ts)
  keyCursor: KeyMark | null = null  // the keyboard cursor (K), where Enter clicks (key_cursor.ts)
  keyMark: KeyMark | null = null  // a box's first corner marked with C at the keyboard cursor
  canvasAt = ''  // the canvas's place on the page at the last press or stroke move (noteCanvasPlace)
  wl: WindowDrag | null = null
  loading: Promise<void> | null = null
  windowTimer = 0
  /** The window this tab's right-drag set and the server has not answered yet. A page's state (built before the
   * drag's action arrived) carries the server's old window: applied meanwhile, it undid the drag on the screen, and
   * one landing between the last move and the button's release sent the old width as the "custom" window (the
   * flaky wheel/zoom/window e2e test). Such states leave the window alone until the drag's own action is answered. */
  windowOwn: Window | null = null
  viewTimer = 0
  encodeBusy = false
  reloading: Promise<void> | null = null
  reloadWanted = false
  look = ''  // the label look last sent to the GPU (applyLabelLook) and the layer it went to
  shownLook = ''  // the label opacity and outline last drawn by the viewer's slice shader (uniforms)
  lookOf: NVImage | null = null
  statusSeq = 0  // bumped by every message shown: a late "Ready" never hides a newer one
  answerSeq = -1  // statusSeq when a prompt's answer was last shown
  // a name sent by leaving the Name box (its statusSeq then) and its page line once shown alone (joinRename)
  renamed: { seq: number; text: string | null } | null = null
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
  ownOpen: { at: number; stamps: number } | null = null  // this tab's open (sample, PACS, upload, series), unanswered (news.ts)
  pageStamp = ''  // the news stamp of the page's status line (app.messages.stamped), and how many it has had
  pageStamps = 0
  pageSeq: { boot: string; n: number } | null = null  // the oldest page still taken (stalePage, pagesBefore)
  staleSeen = ''
  syncAsked = 0  // performance.now() of the last page sync asked, until a page newer than the answers is taken
  reviewKey = ''
  encodeAgain = false
  exported: { boot: string; rev: number } | null = null  // the label revision the last export's file holds
  exportedTag = ''
  nameSent = ''  // the label form's Name box as given or sent (focus, Enter): a name typed and left is sent (nameLeft)
  stepsOnWay = 0  // undo and redo presses sent or waiting in the queue: a held key's repeats wait for them (history)
  // actions sent while the server could not be reached, and what this tab held then: judged once it answers
  unknown: { whats: string[]; sent: { rev: number; boot: string | null }; study: string | null;
    labels: ArrayLike<number> | null } | null = null
  unknownTimer = 0
  settleQueued = false
  editsQueued = 0  // label edits (prompts, strokes, undo, redo) sent or waiting in the queue: a reload asks first
  labelChanges = 0  // label choices and Add label presses queued: prompts made meanwhile take their label when sent
  chosen: { label: number } | null = null  // the newest label choice still on its way (H hides its label: shownActive)
  pressesQueued: HTMLElement[] = []  // page buttons pressed behind queued actions, each waiting its turn (queuePress)
  held: HTMLElement[] = []  // the page's buttons pressed while prompts were queued (AFTER_QUEUE), pressed again after
  heldUploads: HTMLInputElement[] = []  // Upload's file input, its files chosen while prompts were queued (holdUpload)
  heldPicks: (() => void)[] = []  // series picks waiting for the queue (pickAfterQueue): each lets its pick leave
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
    const panel = buildPanel(this, root)
    this.stage = panel.stage
    this.canvas = panel.canvas
    this.overlay = panel.overlay
    this.info = panel.info
    this.statusLine = panel.statusLine
    this.legend = panel.legend
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
    // NiiVue recomputes the image's 3D gradient (a blur and a Sobel pass over every slice) whenever the image layer
    // is refreshed, a study's load included; only its volume rendering reads it, and this viewer never shows one
    // (multiplanarShowRender NEVER). The build's option (vite.config.js) skips it: ~0.25 s of a software
    // renderer's CPU per study opened, for nothing
    ;(this.nv.opts as any).skipGradient = true
    this.slices = new SliceShader(this.nv)
    this.setTool('point')
    // registered before the viewer's own key and mouse handlers: a press counts before its message shows
    for (const type of ['pointerdown', 'keydown']) {
      window.addEventListener(type, (e) => { if (e.isTrusted) this.userActs++ }, true)
    }
    // the order of registration is the order listeners on one target run in: pointer, keys, then the page's
    this.bindPointer()
    this.bindTouch()
    this.bindKeys()
    this.bindPage()
  }

  async start(): Promise<void> {
    await this.nv.attachToCanvas(this.canvas)
    // NiiVue makes its canvas a Tab stop with key handlers of its own (V cycles its slice type, C its clip plane,
    // ...): focused (a Tab there), V chose Navigate and NiiVue turned the view sagittal while the
    // viewer's line went on saying coronal. The stage is the image's one Tab stop, and the keys are the viewer's
    this.canvas.tabIndex = -1
    for (const type of ['keydown', 'keyup']) {
      this.stage.addEventListener(type, (e) => { if (e.target === this.canvas) e.stopPropagation() }, true)
    }
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
    // the window resized under a brush stroke (maximised by a key, the page's layout changed, the mouse still down):
    // the image moves under the mouse, and the stroke joined its last point to the next with a band where the brush
    // never went. Cut there, as M or a zoom mid-stroke (breakStroke)
    new ResizeObserver(() => { this.breakStroke(); this.drawOverlay() }).observe(this.stage)
    setInterval(() => { this.pollState(); this.fitStageToZoom() }, 100)
    this.pollState()
    this.scheduleNews()
  }
}

// The methods, by job: each module's object is copied onto the prototype, and this interface gives them their types.
export interface Viewer extends NewsMethods, PageStateMethods, DownloadMarkMethods, StudyLoaderMethods,
  LabelLayerMethods, WindowLevelMethods, NavigationMethods, GeometryMethods, GestureMethods, PointerMethods,
  KeyboardMethods, PageButtonMethods, ChoiceMethods, LegendMethods, ActionQueueMethods, AnswerMethods,
  OverlayMethods, StatusLineMethods, TouchMethods, KeyCursorMethods {}

Object.assign(Viewer.prototype, newsMethods, pageStateMethods, downloadMarkMethods, studyLoaderMethods,
  labelLayerMethods, windowLevelMethods, navigationMethods, geometryMethods, gestureMethods, pointerMethods,
  keyboardMethods, pageButtonMethods, choiceMethods, legendMethods, actionQueueMethods, answerMethods,
  overlayMethods, statusLineMethods, touchMethods, keyCursorMethods)
