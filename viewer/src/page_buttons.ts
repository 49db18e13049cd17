// The page's buttons and Upload pressed while prompts are queued: held and made again once the queue is empty.
import type { Viewer } from './viewer'

// The page's buttons whose Gradio events read or change the session's labels, label table or study: they do not go
// through the viewer's queue, so pressed while prompts were still queued they ran first. An export missed the last
// clicks, Open sample made the queued clicks arrive after the switch (refused as "another tab opened ..."), and Add
// label was undone by the queued clicks (each sets its label active). Pressed while the queue is busy, a press is
// held and made again once the queue is empty. Not Upload's press (its file chooser opens only on the user's own
// press): the files' choice is held instead (holdUpload); a pick in Upload's series picker waits too (pickAfterQueue).
// The PACS panel's (app/pacs.py): Export to PACS stored the labels without the last clicks, Open from PACS switched
// the study before them (session 27).
export const AFTER_QUEUE = ['#open-sample', '#export-btn', '#add-label', '#clear-label', '#propagate', '#review', '#review-prev',
  '#review-accept', '#review-cut', '#review-next', '#apply-brush', '#oneshot-set', '#oneshot-apply', '#pacs-open',
  '#pacs-export'].join(', ')
// The review's steps (app.ui.REVIEW_STEPS): each press acts, so a repeat held behind the queue is held again (▶ ▶ ▶
// pressed while a fix was on its way went one slice on); a repeat of another button held is one press (Export)
const STEPS = '#review-prev, #review-next, #review-accept'
// How long a press queued behind actions waits for its page before the actions behind it go on (queuePress)
const PRESS_PAGE_MS = 10_000
// The page's buttons that open a study in the session: until the page's answer, a study the news poll finds is theirs
const OPENS = '#open-sample, #pacs-open'

export const pageButtonMethods = {
  /** The page's listeners (buttons, lists, Upload, leaving, the tab shown again), in capture: before Gradio's. */
  bindPage(this: Viewer): void {
    document.addEventListener('click', (e) => this.holdPageButton(e), true)
    document.addEventListener('click', (e) => this.noteOwnOpen(e), true)  // after it: a held press is not sent yet
    document.addEventListener('mousedown', () => this.noteAlternativeShown(), true)  // the radio checked before a click
    document.addEventListener('click', (e) => this.queueAlternative(e), true)  // a radio picks on click ...
    document.addEventListener('keydown', (e) => this.queueAlternativeKey(e), true)  // ... and on arrows and Space
    document.addEventListener('mousedown', (e) => this.queueLabelChoice(e), true)  // Gradio's dropdown picks on mousedown
    document.addEventListener('keydown', (e) => this.queueLabelKey(e), true)  // ... and on Enter (ArrowDown, Enter)
    document.addEventListener('keydown', (e) => this.tabOutOfList(e), true)  // a list left by Tab closes
    this.watchLists()  // ... and one open while its box is not focused
    document.addEventListener('change', (e) => this.holdUpload(e), true)  // files chosen under Upload…
    document.addEventListener('focusin', (e) => this.nameEntered(e), true)  // the label form's Name box: a name
    document.addEventListener('keydown', (e) => this.nameEntered(e), true)  // typed and left without Enter is sent
    document.addEventListener('focusout', (e) => this.nameLeft(e as FocusEvent), true)
    // a reload or a closed tab while edits were queued lost them without a word (the queue lives in this page: only
    // the one on its way reached the server; 5 quick clicks then F5 kept 1): the browser asks first. The page's
    // first script (app.viewer.api.LEAVE_GUARD) asks the same, before Gradio's listener; this one is for a page
    // served without it (then the question stops the listeners registered after it only)
    window.addEventListener('beforeunload', (e) => this.askBeforeLeaving(e))
    window.addEventListener('storage', (e) => this.locksChanged(e.key))  // a lock set in another tab
    // back to this tab: another tab of the session may have edited meanwhile; the page's sync shows the server's state
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.state?.study && this.inFlight === 0) this.syncPage()
      if (document.visibilityState === 'hidden') { window.clearTimeout(this.newsTimer); this.newsTimer = 0; return }
      // shown again: poll now (another tab may have opened another study: the poll names it for the notice)
      window.clearTimeout(this.newsTimer)
      this.newsTimer = 0
      if (!this.newsBusy) this.pollNews()
    })
  },

  /** A press of one of the page's buttons (AFTER_QUEUE) while the viewer's prompts are queued waits for them:
   * it is stopped here (before Gradio's own handler) and made again by :meth:`releaseHeld` when the queue is
   * empty. Presses made again are the script's own (not trusted) and pass. */
  holdPageButton(this: Viewer, e: MouseEvent): void {
    if (!e.isTrusted) return
    const b = (e.target as Element | null)?.closest?.(AFTER_QUEUE) as HTMLElement | null
    if (!b || (b as HTMLButtonElement).disabled) return
    if (b.id === 'add-label') { e.preventDefault(); e.stopImmediatePropagation(); this.queueAddLabel(b); return }
    if (this.settled()) return
    e.preventDefault(); e.stopImmediatePropagation()
    if (b.matches(OPENS)) {  // a click made after it was made on the study shown: it goes there first (queuePress)
      if (!this.held.includes(b)) this.held.push(b)
    } else if (this.pressesQueued.at(-1) !== b || b.matches(STEPS)) this.queuePress(b)
    this.sayHeld((b.textContent || 'that').trim())
  },

  /** A page button pressed behind queued actions takes its place in the queue: pressed when the actions before it
   * are answered, and the actions made after it wait for its page (the event done; PRESS_PAGE_MS at most). Held
   * until the queue was empty, a click made right after Clear label went first and was cleared with the rest (click,
   * Clear label, click elsewhere: nothing left). Not a study's open: a click made after it, on the study shown, goes
   * to that study first, as before (sent after the open, it was refused as made on a study no longer open). */
  queuePress(this: Viewer, b: HTMLElement): void {
    this.pressesQueued.push(b)
    // the plane shown at the press: Propagate, one-shot and Apply mask act on it (#viewer-shown goes with their event).
    // Read at the replay, a Propagate pressed on the slice just boxed, then ↑ to look at the next one, ran from there
    // ("slice 7 holds nothing of label 1")
    const shownBox = () => document.querySelector('#viewer-shown textarea, #viewer-shown input') as HTMLInputElement | null
    const shown = shownBox()?.value ?? ''
    const tick = () => new Promise((r) => setTimeout(r, 50))  // Gradio takes a box's input on its next update
    this.queue = this.queue.then(async () => {
      try {
        const seq = () => document.querySelector('#viewer-state [data-state]')?.getAttribute('data-seq') ?? ''
        const before = seq()
        const box = shownBox()
        const moved = !!box && !!shown && box.value !== shown
        if (moved) { box!.value = shown; box!.dispatchEvent(new Event('input', { bubbles: true })); await tick() }
        if (b.isConnected) b.click()  // the page's own event (not trusted: holdPageButton lets it pass)
        if (moved) { await tick(); this.publishShown() }  // the plane shown now, for the presses after it
        const t0 = performance.now()
        while (b.isConnected && seq() === before && performance.now() - t0 < PRESS_PAGE_MS) {
          await new Promise((r) => setTimeout(r, 50))
        }
      } finally {
        this.pressesQueued.splice(this.pressesQueued.indexOf(b), 1)
        if (this.settled()) this.releaseHeld()
      }
    })
  },

  /** The status line for a press or pick held behind the queue: what waits for what. */
  sayHeld(this: Viewer, what: string): void {
    const n = this.pending.length
    this.showStatus(n === 0 ? `${what}: after the label change…`
      : `${what}: after your ${n > 1 ? `${n} prompts` : 'prompt'} still on the way to the server…`)
  },

  /** Add label goes through the viewer's queue, in order with the prompts: pressed while prompts were queued, they
   * made label 1 active again after it; a click made right after it, before the page showed the new label, named
   * label 1 and went there. The press is made again when its turn comes, and the queue waits for the page to show
   * the new label (10 s at most) before the prompts behind it take their label. */
  queueAddLabel(this: Viewer, b: HTMLElement): void {
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
  },

  /** Leaving while edits are queued: the browser asks first. Gradio's own ``beforeunload`` listener closes its
   * connection whether or not the user stays, so a page event on its way then failed ("Connection errored out")
   * and Gradio reloaded the page 2 s later: the user who stayed was asked again for the same edits, or, with none
   * queued by then, the page reloaded under them. While asking, the listeners after it are stopped (the page's
   * first script calls this: app.viewer.api.LEAVE_GUARD); with nothing queued nobody is asked and Gradio's runs. */
  askBeforeLeaving(this: Viewer, e: BeforeUnloadEvent): void {
    if (this.editsQueued === 0) return
    e.stopImmediatePropagation()
    e.preventDefault()
    e.returnValue = ''
  },

  /** Nothing queued: no prompt on its way, no label change or page button waiting for the page. */
  settled(this: Viewer): boolean {
    return this.inFlight === 0 && this.labelChanges === 0 && this.pressesQueued.length === 0
  },

  /** Open sample or Open from PACS pressed (and sent: a press held by :meth:`holdPageButton` stops before this
   * listener, and is noted when it is made again): until the page's next server message, a poll that finds the
   * session on another study is this tab's own open on its way, not another tab's (news.ts, followStudy). */
  noteOwnOpen(this: Viewer, e: MouseEvent): void {
    const b = (e.target as Element | null)?.closest?.(OPENS) as HTMLButtonElement | null
    if (b && !b.disabled) this.openLeaves()
  },

  /** This tab's open leaves for the server now (noteOwnOpen, holdUpload, pickAfterQueue). */
  openLeaves(this: Viewer): void {
    this.ownOpen = { at: performance.now(), stamps: this.pageStamps }
  },

  /** A pick in Upload's series picker (app/series_picker.py: its Gradio event's ``js`` awaits this before the pick
   * leaves, so mouse and Enter picks alike, and nothing is replayed through the list) waits for the prompts still
   * queued, as the page's buttons do: it opened the series at once, and the queued clicks arrived after it, refused
   * as made on a study no longer open. Once it leaves it is this tab's own open (openLeaves). */
  pickAfterQueue(this: Viewer, what: string): Promise<void> {
    if (this.settled()) { this.openLeaves(); return Promise.resolve() }
    this.sayHeld(what)
    return new Promise((resolve) => this.heldPicks.push(() => { this.openLeaves(); resolve() }))
  },

  /** Files chosen under Upload… while prompts are queued wait for them, as the page's buttons do: the upload opened
   * its study at once, and the clicks still queued arrived after it, refused as made on a study no longer open ("another
   * tab opened ..."): 3 quick clicks then an upload kept 1. The file chooser opens on the user's own press (not held);
   * the choice (the input's change, before Gradio's handler) is stopped here and made again by :meth:`releaseHeld`:
   * the input still holds the files. */
  holdUpload(this: Viewer, e: Event): void {
    const input = e.target as HTMLInputElement | null  // Gradio's UploadButton: the file input just before #upload
    if (input?.type !== 'file' || input.nextElementSibling?.id !== 'upload') return
    if (input === this.replaying || this.settled()) { this.openLeaves(); return }
    e.stopImmediatePropagation()
    if (!this.heldUploads.includes(input)) this.heldUploads.push(input)
    this.sayHeld('Upload')
  },

  /** The Name box's text as last given or sent: on focus, and on Enter (Gradio sends it then). */
  nameEntered(this: Viewer, e: Event): void {
    const input = e.target as HTMLInputElement | null
    if (!input?.closest?.('#label-name')) return
    if (e.type === 'focusin' || (e as KeyboardEvent).key === 'Enter') this.nameSent = input.value
  },

  /** A name typed in the label form's Name box and left without Enter (a click on the image to go on, Tab): it was
   * never sent. The box went on showing it over a label still named as before (legend, table, Active label box),
   * and the export carried the old name. Leaving the box now renames the label the form shows, as Enter does
   * (Gradio's own submit, so the label form's label goes with it); not when the focus goes to Add label, whose
   * press names the new label so. */
  nameLeft(this: Viewer, e: FocusEvent): void {
    const input = e.target as HTMLInputElement | null
    if (!e.isTrusted || !input?.closest?.('#label-name') || !this.state?.study) return
    if ((e.relatedTarget as Element | null)?.closest?.('#add-label')) return
    if (!input.value.trim() || input.value === this.nameSent) return
    this.nameSent = input.value
    // left by a press on the image (onPress focuses the stage): its line and the click's answer, joined (joinRename)
    if ((e.relatedTarget as Element | null)?.closest?.('#viewer-stage')) this.renamed = { seq: this.statusSeq, text: null }
    input.dispatchEvent(new KeyboardEvent('keypress', { key: 'Enter', code: 'Enter', bubbles: true, cancelable: true }))
  },

  releaseHeld(this: Viewer): void {
    for (const b of this.held.splice(0)) if (b.isConnected) b.click()
    for (const input of this.heldUploads.splice(0)) {
      if (!input.isConnected || !input.files?.length) continue
      this.replaying = input  // Gradio's own handler takes it (holdUpload lets it pass)
      try { input.dispatchEvent(new Event('change', { bubbles: true })) } finally { this.replaying = null }
    }
    for (const leave of this.heldPicks.splice(0)) leave()
  },
}

export type PageButtonMethods = typeof pageButtonMethods
