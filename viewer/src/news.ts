// News of other tabs of this session: a cheap poll of the server, a label table or study changed elsewhere.
import type { Viewer } from './viewer'
import { apiUrl, traceMark } from './util'

// An idle tab asks the server for its label table's digest this often while it is shown (GET /viewer-api/news,
// ~100 bytes): another tab's rename or colour change reaches it without an action of its own. A failed poll
// doubles the wait, up to NEWS_MAX_MS (a server that is down gets no storm); a hidden tab does not poll.
export const NEWS_MS = 3000
const OWN_OPEN_MS = 600_000  // how long this tab's open (noteOwnOpen, openLeaves) counts as on its way
export const NEWS_MAX_MS = 60_000

export const newsMethods = {
  /** The next poll of the server's news after ``newsWait``; none while the tab is hidden (visibilitychange
   * reschedules it), while one is due or while one is in flight. */
  scheduleNews(this: Viewer): void {
    if (this.newsTimer || this.newsBusy || document.visibilityState === 'hidden') return
    this.newsTimer = window.setTimeout(() => { this.newsTimer = 0; this.pollNews() }, this.newsWait)
  },

  async pollNews(this: Viewer): Promise<void> {
    this.newsBusy = true
    try {
      if (this.state?.study) {
        const r = await fetch(apiUrl('news'), { cache: 'no-store' })
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
  },

  /** Another tab renamed or recoloured a label: this page's table (legend, label box) is refreshed by its sync,
   * at once when nothing is queued, else when the queue is done. One sync per digest, again after 10 s if the page
   * still shows another table (a sync that failed). */
  onNews(this: Viewer, news: { study?: string | null; name?: string; table?: string | null; rev?: number | null; boot?: string }): void {
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
  },

  /** Another tab of this session opened another study: the session has one open study, and this tab's prompts
   * would be refused (409), so it follows: its page's sync loads that study, and the status line says which and
   * that the first study's work is kept (the session keeps each study's labels). Not while the user draws or an
   * action is in flight (the next poll follows, or the refused action's sync). Before, it went on showing the
   * first study without a word. */
  followStudy(this: Viewer, study: string, name: string | undefined): void {
    if (this.loading || this.inFlight > 0 || this.drag) return
    // this tab's own open (Open sample, Open from PACS, an upload, a series pick), not answered yet (no server
    // message since it left, 10 minutes at most): the study the poll sees is most likely that open's, which its answer
    // shows. Followed here, a slow open was announced as "Another tab opened ..." to a user alone with one tab (CI,
    // session 26; the PACS open and the series pick: session 27)
    const own = this.ownOpen
    if (own && this.pageStamps === own.stamps && performance.now() - own.at < OWN_OPEN_MS) return
    const f = this.following
    if (f && f.study === study && performance.now() - f.at < 10_000) return  // its sync is under way
    this.following = { study, name: name || 'another study', from: this.state?.name || 'the study shown before',
      at: performance.now(), stamps: this.pageStamps }
    traceMark('study.follow')
    this.syncPage()
  },
}

export type NewsMethods = typeof newsMethods
