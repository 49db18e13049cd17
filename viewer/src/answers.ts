// An action's answer applied to the viewer, a refusal said, a lost answer checked against the server's state.
import type { Viewer } from './viewer'
import type { Answer, State } from './types'
import { REVISION_KINDS, SAID } from './action_kinds'
import { apiUrl, traceMark } from './util'

// how often a server that answered neither an action nor the question after it is asked again (settleUnknown)
export const UNKNOWN_MS = 1500

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
    if (a.status && !quiet && !this.answerAfterRename(a.status)) {
      this.showStatus(a.status, a.at !== undefined && a.boot ? { boot: a.boot, seq: a.at } : undefined)
      this.answerSeq = this.statusSeq
    }
    this.drawOverlay()
  },

  /** A failed answer's own message (a 4xx/5xx of this server: it says what it refused), or null when the answer
   * has none (a proxy's error page, a body cut short): then whether the action was applied is not known. */
  async refusalOf(this: Viewer, r: Response): Promise<string | null> {
    try { const a = await r.json(); return typeof a?.error === 'string' && a.error ? a.error : null } catch { return null }
  },

  /** The action's answer was lost (connection dropped, a proxy's timeout) or was an error of the server's own (a 5xx
   * after the edit was made: a failed save): the server may have applied it all the same. Saying "not applied" then
   * made the user prompt twice (or believe work was missing), so the server is asked first: its state (GET /state
   * waits for the session's lock, so an action still running there ends first) against the label map this tab held
   * when it sent the action. A label edit moves the revision; the labels are then fetched again and the user told it
   * was applied. Only a revision that stayed means "not applied". (Another tab of the session editing in the same
   * moment would read as this action's: the server keeps no action ids.) A server that does not answer that either
   * (down, the network gone) is asked again until it answers (settleUnknown). */
  async answerLost(this: Viewer, kind: string, why: string, sent: { rev: number; boot: string | null },
    how: 'lost' | 'error' = 'lost'): Promise<void> {
    const what = SAID[kind] ?? 'action'
    const failed = how === 'lost' ? `the server did not answer (${why})` : `the server answered an error (${why})`
    if (!REVISION_KINDS.has(kind)) {
      this.showError(`${failed}; your ${what} may not have been applied`)
      return
    }
    const s = await this.serverState()
    if (s === null) {
      // the server cannot be asked now: the labels this tab held when the action left are kept to judge it against
      // once it answers (a restarted server counts its revisions anew: its labels are compared instead)
      const u = this.unknown ?? { whats: [], sent, study: this.study, labels: this.labelsCopy() }
      u.whats.push(what)
      this.unknown = u
      this.showError(`${failed}, nor when asked again: whether your ${u.whats.length > 1 ? 'actions were' : `${what} was`} ` +
        'applied is checked once it answers')
      this.watchUnknown()
      return
    }
    traceMark('action.lost', { kind, rev: s.rev, sent: sent.rev })
    const sameBoot = (s.boot ?? null) === sent.boot
    if (s.study === this.study && sameBoot && sent.rev >= 0 && s.rev > sent.rev) {
      if ('object' in s) this.object = s.object ?? null
      this.rev = -1
      await this.reloadLabels()
      const lost = how === 'lost' ? `its answer was lost on the way: ${why}` : `though the server answered an error: ${why}`
      this.showStatus(`Your ${what} was applied (${lost}); the labels shown are the server's.`)
    } else if (sameBoot && s.rev === sent.rev) {
      this.showError(`${failed}; your ${what} was not applied`)
    } else {
      if (s.study === this.study) { this.rev = -1; await this.reloadLabels() }  // restarted: show what it holds
      this.showError(`${failed} and has changed since: check whether your ${what} is there`)
    }
  },

  /** The server's state now, or null when it does not answer. */
  async serverState(this: Viewer): Promise<State | null> {
    try {
      const r = await fetch(apiUrl('state'), { cache: 'no-store' })
      return r.ok ? await r.json() : null
    } catch {
      return null
    }
  },

  /** A copy of the label map shown (the voxels; null before one is shown). */
  labelsCopy(this: Viewer): ArrayLike<number> | null {
    const img = this.labelsVol?.img as any
    return img ? img.slice() : null
  },

  /** Ask the unreachable server again every UNKNOWN_MS, between the queue's actions, until it answers. */
  watchUnknown(this: Viewer): void {
    if (this.unknownTimer) return
    this.unknownTimer = window.setInterval(() => {
      if (!this.unknown || this.settleQueued) return
      this.settleQueued = true
      this.queue = this.queue.then(() => this.settleUnknown()).finally(() => { this.settleQueued = false })
    }, UNKNOWN_MS)
  },

  /** The actions sent while the server could not be reached, judged once it answers (a queued action asks first):
   * "not known" was the last word before, though a refused connection means the action never arrived. The
   * revision the tab held when they left (the same server process), or the labels it held (a restarted one),
   * unchanged means none was applied: said plainly, with what to do. Run in the queue (no action between). */
  async settleUnknown(this: Viewer): Promise<void> {
    const u = this.unknown
    if (!u) return
    const s = await this.serverState()
    if (s === null) return  // still unreachable: asked again later
    this.unknown = null
    window.clearInterval(this.unknownTimer)
    this.unknownTimer = 0
    const what = u.whats.length > 1 ? `${u.whats[0]} and ${u.whats.length - 1} more action${u.whats.length > 2 ? 's' : ''}`
      : u.whats[0]
    const were = u.whats.length > 1 ? 'were' : 'was'
    const again = u.whats.length > 1 ? 'do them again' : u.whats[0] === 'click' ? 'click again' : 'do it again'
    const notApplied = `Your ${what} ${were} not applied: the server was unreachable; ${again}.`
    traceMark('action.settled', { rev: s.rev, sent: u.sent.rev })
    if (s.study !== u.study || s.study !== this.study) {
      this.showError(`the server answers again, with another study open: check whether your ${what} ${were} applied`)
      return
    }
    if ((s.boot ?? null) === u.sent.boot && u.sent.rev >= 0) {
      if (s.rev === u.sent.rev) { this.showError(notApplied); return }
      if ('object' in s) this.object = s.object ?? null
      this.rev = -1
      await this.reloadLabels()
      this.showStatus(u.whats.length > 1
        ? `The server answers again and has applied some of your ${what}: the labels shown are the server's; check them.`
        : `Your ${what} was applied (the server was unreachable for its answer); the labels shown are the server's.`)
      return
    }
    // another server process (restarted): its revisions are another count; the labels tell
    if ('object' in s) this.object = s.object ?? null
    this.rev = -1
    await this.reloadLabels()
    const now = this.rev >= 0 ? this.labelsCopy() : null  // its labels fetched (else: not known, never "not applied")
    const same = u.labels !== null && now !== null && u.labels.length === now.length &&
      Array.prototype.every.call(now, (v: number, i: number) => v === u.labels![i])
    if (same) this.showError(notApplied)
    else this.showError(`the server restarted while your ${what} ${were} on the way, and its labels differ from ` +
      `those shown before: the labels shown are the server's; check whether your ${what} ${u.whats.length > 1 ? 'are' : 'is'} there`)
  },

  async errorOf(this: Viewer, r: Response): Promise<string> {
    try { const a = await r.json(); return a.error || `request failed (${r.status})` } catch { return `request failed (${r.status})` }
  },
}

export type AnswerMethods = typeof answerMethods
