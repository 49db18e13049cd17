// The shapes the viewer exchanges with the server (app.viewer.api, app.viewer.actions) and keeps while drawing.

export type LabelDef = { value: number; name: string; colour: string }
export type ObjectMarks = { view: string; index: number; points: { mm: number[]; positive: boolean }[]; box: number[][] | null }

/** The page's state (``#viewer-state [data-state]``, app.viewer.state): what the server holds for this session. */
export type State = {
  study: string | null; rev: number; boot?: string; name?: string; rgb?: boolean; is2d?: boolean
  views?: string[]; view?: string; acquisition?: string; slice_mm?: number[]
  labels?: LabelDef[]; active?: number; window?: { level: number; width: number } | null; opacity?: number
  object?: ObjectMarks | null; index?: number
  review?: { index: number; position: number; n: number }
  anchors?: number[]  // the active label's anchor slices (their index in the acquisition view): propagation keeps them
  table?: string
}

export type Suggested = { view: string; index: number; mm: number[]; positive: boolean; score: number }

/** An action's answer (POST /viewer-api/action). */
export type Answer = {
  ok: boolean; error?: string; status?: string; rev?: number; base?: number; reload?: boolean; object?: ObjectMarks | null
  at?: number; boot?: string  // the status's place in its server process's news order (app.messages.news_stamp)
  table?: string  // the label table the action found (a digest): another tab renamed or recoloured a label
  suggest?: Suggested | null
  model?: string  // a model choice's answer: the model in use
  page?: number  // the newest page state built when the action was applied (app.viewer.actions.PageOrder)
  patch?: LabelPatch | null
}

/** One plane of the label map, changed by an action: base64 of uint16 values (app.viewer.actions). */
export type LabelPatch = { axis: number; index: number; shape: number[]; data: string }

/** An action as sent: its ``kind`` and the fields that kind takes (app.viewer.actions reads them). */
export type ActionBody = { kind: string; [field: string]: any }

export type Tool = 'point' | 'box' | 'brush' | 'erase' | 'navigate'

// A server message's place in the news order: the server process (``boot``) and its count there (``seq``). Never
// the wall clock: one stepped back (NTP) made later news look older.
export type News = { boot: string; seq: number }

/** A prompt on its way to the server, drawn as a pending marker until its answer. */
export type Pending = { kind: 'point' | 'box' | 'stroke'; view: string; mm: number[][]; positive?: boolean }

/** A left-button drag on the image: a box or a brush stroke. A stroke that leaves the image is cut there: ``done``
 * holds its finished pieces, ``out`` says it is outside. */
export type Drag = {
  x0: number; y0: number; x: number; y: number; view: string; mm0: number[]; stroke: number[][]; button: number
  done: number[][][]; out: boolean; last: [number, number]; outAt: [number, number]
}

/** A right-button window/level drag: where it began and the window then. */
export type WindowDrag = { x: number; y: number; level: number; width: number }
export type Window = { level: number; width: number }
