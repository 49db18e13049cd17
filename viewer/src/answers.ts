// An action's answer applied to the viewer, a refusal said, a lost answer checked against the server's state.
import type { Viewer } from './viewer'
import type { Answer, State } from './types'
import { REVISION_KINDS, SAID } from './action_kinds'
import { apiUrl, failure, traceMark } from './util'

export const answerMethods = {
  async apply(this: Viewer, a: Answer, quiet: boolean): Promise<void> {
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
    }
    if ('object' in a) this.object = a.object ?? null
    // another tab renamed or recoloured a label: this page's table (legend, label box) is refreshed by its sync
    if (a.table !== undefined && this.state?.table !== undefined && a.table !== this.state.table) this.tableStale = true
    if (a.status && !quiet) this.showStatus(a.status, a.at !== undefined && a.boot ? { boot: a.boot, seq: a.at } : undefined)
    this.drawOverlay()
  },

  /** A failed answer's own message (a 4xx/5xx of this server: it says what it refused), or null when the answer
   * has none (a proxy's error page, a body cut short): then whether the action was applied is not known. */
  async refusalOf(this: Viewer, r: Response): Promise<string | null> {
    try { const a = await r.json(); return typeof a?.error === 'string' && a.error ? a.error : null } catch { return null }
  },

  /** The action's answer was lost (connection dropped, a proxy's timeout): the server may have applied it all the
   * same. Saying "not applied" then made the user prompt twice (or believe work was missing), so the server is asked
   * first: its state (GET /state waits for the session's lock, so an action still running there ends first) against
   * the label map this tab held when it sent the action. A label edit moves the revision; the labels are then
   * fetched again and the user told it was applied. Only a revision that stayed means "not applied". (Another tab
   * of the session editing in the same moment would read as this action's: the server keeps no action ids.) */
  async answerLost(this: Viewer, kind: string, why: string, sent: { rev: number; boot: string | null }): Promise<void> {
    const what = SAID[kind] ?? 'action'
    if (!REVISION_KINDS.has(kind)) {
      this.showError(`the server did not answer (${why}); your ${what} may not have been applied`)
      return
    }
    let s: State
    try {
      const r = await fetch(apiUrl('state'), { cache: 'no-store' })
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
  },

  async errorOf(this: Viewer, r: Response): Promise<string> {
    try { const a = await r.json(); return a.error || `request failed (${r.status})` } catch { return `request failed (${r.status})` }
  },
}

export type AnswerMethods = typeof answerMethods
