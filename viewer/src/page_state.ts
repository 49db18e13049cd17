// The Gradio page's state (#viewer-state, #status): read every 100 ms, stale pages refused, a sync asked.
import type { Viewer } from './viewer'
import type { Answer, State } from './types'
import { traceMark } from './util'

export const pageStateMethods = {
  pollState(this: Viewer): void {
    this.watchPageStatus()
    this.readPageStatus()
    for (const { text, news } of this.pageStatuses.splice(0)) {
      if (!text) continue
      if (text.startsWith('⚠')) this.showError(text.replace(/^⚠\s*/, ''))
      else if (!this.joinRename(text, news)) this.showStatus(text, news)
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
    // attribute from its own props), which could drop the mark set once; it writes only what the button lacks
    this.markDownload()
    if (holder && this.stalePage(holder.getAttribute('data-seq') || '')) return
    const text = holder?.getAttribute('data-state') || ''
    if (!text || text === this.stateText) return
    this.stateText = text
    let s: State
    try { s = JSON.parse(text) } catch { return }
    this.state = s
    this.onState(s)
  },

  /** An action's answer: the pages built before it (numbered up to ``a.page``) hold the server as it was before
   * the action, so they are stale from now on. A page built before a label picked in the legend but delivered
   * after its answer made the old label active again here, and the click made next named it: the server made it
   * active again and the structure went into it (the pick lost; the flaky add-label/label-pick e2e test). */
  pagesBefore(this: Viewer, a: Answer): void {
    if (a.page === undefined || !a.boot) return
    const shown = this.pageSeq
    if (!shown || shown.boot !== a.boot || shown.n <= a.page) this.pageSeq = { boot: a.boot, n: a.page + 1 }
  },

  /** Note the page's status line on every change, not only every 100 ms: an error followed within the
   * poll's interval by another message was never seen (the poll shows them in order, the error kept). */
  watchPageStatus(this: Viewer): void {
    const host = document.querySelector('#status')
    if (!host || host === this.statusHost) return
    this.statusObserver?.disconnect()
    this.statusHost = host
    this.statusObserver = new MutationObserver(() => this.readPageStatus())
    this.statusObserver.observe(host, { childList: true, subtree: true, characterData: true })
  },

  /** The page's status line and its place in the news order (the server's hidden ``<time title="news BOOT.N">``,
   * app.messages.stamped). */
  readPageStatus(this: Viewer): void {
    const md = document.querySelector('#status [data-testid="markdown"]') as HTMLElement | null
    const pageStatus = md?.innerText?.trim() ?? ''
    const stamp = md?.querySelector('time[title]')?.getAttribute('title') ?? ''
    if (stamp !== this.pageStamp) { this.pageStamp = stamp; this.pageStamps++ }  // a new server message, same text or not
    if (pageStatus === this.pageStatus) return
    this.pageStatus = pageStatus
    const m = /^news ([0-9a-f]+)\.(\d+)$/.exec(stamp)
    this.pageStatuses.push({ text: pageStatus, news: m ? { boot: m[1], seq: Number(m[2]) } : undefined })
  },

  /** A page the server built before one this tab has shown, or before an action this tab has had answered (its
   * ``data-seq``, app.viewer.actions.PageOrder): Gradio applies each event's outputs as they arrive, so a page built
   * before an Add label but sent after it put label 1 back in the label box while the server had label 2 active.
   * Such a page is not taken as the state, and the page is asked for again (its sync is built after everything
   * sent before it), once the queue is done if actions are on their way (each would make it stale again). */
  stalePage(this: Viewer, seq: string): boolean {
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
  },

  onState(this: Viewer, s: State): void {
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
  },

  /** A review of a propagation (app.review) steps through slices on the server: show the slice it is at. */
  followReview(this: Viewer, s: State): void {
    const key = s.review ? `${s.view}/${s.review.index}/${s.review.position}` : ''
    if (key && key !== this.reviewKey && s.slice_mm && s.view) {
      this.currentView = s.view
      if (!this.three) this.applyLayout()
      this.moveTo(s.slice_mm, s.view)
      this.showInfo()
      this.requestEncode()
    }
    this.reviewKey = key
  },

  /** The state of the page shown now (``#viewer-state``), read at once: the page's lists come with it. */
  shownState(this: Viewer): State | null {
    const text = document.querySelector('#viewer-state [data-state]')?.getAttribute('data-state')
    try { return text ? JSON.parse(text) : null } catch { return null }
  },

  /** A page sync was asked less than 5 s ago and no page newer than the answers has come since. */
  syncOnItsWay(this: Viewer): boolean {
    return this.syncAsked > 0 && performance.now() - this.syncAsked < 5_000
  },

  syncPage(this: Viewer): void {
    this.syncAsked = performance.now()
    traceMark('sync.click')
    const b = document.querySelector('#viewer-sync') as HTMLButtonElement | null
    b?.click()
  },
}

export type PageStateMethods = typeof pageStateMethods
