// The network/session client: prompts and other actions go to /viewer-api/action one at a time, in order (none dropped).
import type { Viewer } from './viewer'
import type { Answer, Pending } from './types'
import { EDIT_KINDS, REVISION_KINDS, SUGGEST_KINDS } from './action_kinds'
import { RENEWED_HEADER, apiUrl, failure, nextTraceId, traceMark } from './util'

export const actionQueueMethods = {
  /** Undo or redo the last edit (ctrl+Z/Y, the toolbar's buttons: ``how`` names the press). Not while a study is on its
   * way into the viewer: it undid that study's last edit out of sight, and the study's own line then hid the "Undid
   * ..." (the work was gone without a word). Said as the keys that need the image are. */
  history(this: Viewer, kind: 'undo' | 'redo', how: string, repeat = false): void {
    if (this.state?.study && (this.loading || !this.nv.volumes.length)) {
      this.sayNotShown(`${how}`, 'applied', 'press it')
      return
    }
    // ctrl+Z held: each of the key's repeats (30 a second) queued an undo, faster than a server answers them, so the
    // queue went on undoing after the user let go on seeing the mask they wanted (10 undone of a 1 s hold on a slow
    // server), and their next edit dropped the undone ones for good. A repeat now waits for the step before it to be
    // answered: the screen keeps up with the key, one step behind at most.
    if (repeat && this.stepsOnWay > 0) return
    this.stepsOnWay++
    this.enqueue({ kind })
    this.queue.finally(() => { this.stepsOnWay-- })
  },

  /** A prompt for the active label, into the queue. With a label change queued before it the label is taken when it
   * leaves, and so is the lock check (the server refuses a locked label: ``locked`` goes with it): checked here
   * against the label active before the change, a click right after leaving a locked label was refused. */
  prompt(this: Viewer, body: any, mark: Pending): void {
    const active = this.state?.active ?? 1
    if (this.labelChanges === 0 && this.locked.has(active)) {
      this.showError(`label ${active} is locked: unlock it to edit it`)
      return
    }
    // an edit of a hidden label (H pressed to see the image under it, then a click) showed nothing: "overlay
    // updated" over an image without the mask. Editing a label shows it again, as painting a hidden segment does
    const target = this.shownActive()
    if (this.hidden.has(target)) { this.hidden.delete(target); this.applyLabelLook() }
    if (this.labelChanges > 0) body.labelLate = true  // a label choice is queued before it: the label active then
    else body.label = active
    body.locked = [...this.locked]
    this.pending.push(mark)
    this.drawOverlay()
    this.enqueue(body, mark)
  },

  enqueue(this: Viewer, body: any, pending: Pending | null = null, quiet = false): void {
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
    const id = nextTraceId()
    const asks = SUGGEST_KINDS.has(body.kind) // prompts and undo/redo answer with the next suggestion when asked
    if (this.suggestOn && asks) body.suggest = true
    traceMark('action.queued', { id, kind: body.kind })
    this.queue = this.queue.then(async () => {
      if (this.unknown) await this.settleUnknown()  // actions lost to an unreachable server: judged before this one
      // the label map this tab holds as the action leaves: a lost answer is judged against it
      const sent = { rev: this.rev >= 0 ? this.rev : this.state?.rev ?? -1, boot: this.revBoot ?? this.state?.boot ?? null }
      if (body.labelLate) { delete body.labelLate; body.label = this.state?.active ?? 1 }
      // the object this tab shows as the click leaves (the answers before it applied): the server starts a new one
      // where another tab changed it meanwhile, rather than adding this point to an object this tab never saw
      if (body.kind === 'point' && !body.new_object) body.object_points = this.object?.points.length ?? 0
      let taken = false
      try {
        traceMark('action.sent', { id, kind: body.kind })
        const send = () => fetch(apiUrl('action'), {
          method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Trace-Id': id }, body: JSON.stringify(body),
        })
        let r = await send()
        // another tab (a page load, an upload) renewed the session's cookie while this action was on its way: the
        // server did nothing with it, and the browser holds the new cookie now; sent once more, it is not lost
        if (r.status === 409 && r.headers.get(RENEWED_HEADER)) r = await send()
        if (!r.ok) {
          const refused = await this.refusalOf(r)  // the server's own message
          // a 5xx comes after the edit may have been made (its save failed): "try again" then made it twice
          if (refused !== null && r.status >= 500 && REVISION_KINDS.has(body.kind)) await this.answerLost(body.kind, refused, sent, 'error')
          else if (refused !== null) this.showError(refused)  // refused (4xx): nothing changed
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
          // a page button queued next (queuePress) brings a page built after these actions; a sync's page, come while
          // the press waits, was taken for the press's own and let the actions behind it go before its event ran
          if ((this.syncWanted || this.tableStale) && !this.pressesQueued.length) {
            this.syncWanted = false; this.tableStale = false; this.syncPage()
          }
          if (this.encodeWanted || this.readyWanted) { this.encodeWanted = false; this.requestEncode() }
          if (this.settled()) this.releaseHeld()  // else after the label change or press queued (page_buttons.ts)
        }
      }
    })
  },
}

export type ActionQueueMethods = typeof actionQueueMethods
