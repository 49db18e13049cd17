// The status/error line under the image: an error stays until the user acts; older server news never hides newer.
import type { Viewer } from './viewer'
import type { News } from './types'

export const statusLineMethods = {
  /** A message replaces the one shown, except an error the user has not acted on since: a late answer,
   * a background "Ready" or a propagation's progress never hides it (issue 19). A server message (``news``: its
   * place in the news order) older than one already shown is dropped: the page's warm-up says "Opened ... Ready"
   * when its encode ends, which came after the answer of a click made meanwhile and replaced it. A message of
   * another server process (restarted) is taken as newer: its count starts again. */
  showStatus(this: Viewer, text: string, news?: News): void {
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
  },

  /** The slice's "Ready" joins the message shown instead of replacing it ("Review: slice 2 ..." stays
   * readable after the viewer moved there and encoded it); an error stays as it is. */
  addReady(this: Viewer, ready: string): void {
    if (this.statusLine.classList.contains('mv-error')) return
    const text = (this.statusLine.textContent ?? '').trim()
    // already said, by the viewer or by the page's warm-up ("... Ready: the slice is encoded (backend ...)."):
    // said twice, the status took three lines and pushed the page past 900 px (session 12)
    if (/Ready: the slice is encoded(?: \([^)]*\))?\.?$/.test(text)) return
    this.showStatus(text ? `${text} · ${ready}` : ready)
  },

  /** The page's status line for a name sent by leaving the Name box (nameLeft) and a prompt's answer: the user left
   * the box by clicking on the image, so both come at once. The name's line came after the click's answer and
   * replaced it (``Label 1: liver, colour #e6194b.`` where ``Positive click (1 point)`` was due), and the user could
   * not tell the click was taken. The one that comes second now joins the first: ``Positive click ... · Label 1:
   * liver ...``. Returns whether the page's line was shown so (else showStatus shows it as any other). */
  joinRename(this: Viewer, text: string, news?: News): boolean {
    const r = this.renamed
    if (!r || r.text !== null) return false
    if (this.answerSeq > r.seq && this.statusSeq === this.answerSeq && !this.statusLine.classList.contains('mv-error')) {
      this.renamed = null
      this.showStatus(`${(this.statusLine.textContent ?? '').trim()} · ${text}`)
      return true
    }
    this.showStatus(text, news)
    this.renamed = this.statusLine.textContent === text ? { seq: this.statusSeq, text } : null
    return true
  },

  /** A prompt's answer (``status``) after the name's line was shown alone (joinRename): joined to it, the click's
   * first, whatever their order in the server's news (the name's may be the newer: the answer then was dropped). */
  answerAfterRename(this: Viewer, status: string): boolean {
    const r = this.renamed
    if (!r || r.text === null) return false
    this.renamed = null
    if (this.statusSeq !== r.seq || this.statusLine.classList.contains('mv-error')) return false
    this.showStatus(`${status} · ${r.text}`)
    return true
  },

  showError(this: Viewer, text: string): void {
    this.errorAt = this.userActs
    this.statusSeq += 1
    this.statusLine.textContent = `⚠ ${text}`
    this.statusLine.classList.add('mv-error')
  },
}

export type StatusLineMethods = typeof statusLineMethods
