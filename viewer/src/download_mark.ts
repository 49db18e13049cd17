// The Download button says when it holds labels older than those shown.
import type { Viewer } from './viewer'

const STALE_TITLE = 'This file holds the labels as they were at the export: export again'

export const downloadMarkMethods = {
  /** An export's page names the label revision its file holds (``BOOT.REV``, app.ui ``data-exported``). */
  noteExport(this: Viewer, tag: string): void {
    const m = /^([0-9a-f]+)\.(\d+)$/.exec(tag)
    if (!m || tag === this.exportedTag) return
    this.exportedTag = tag
    this.exported = { boot: m[1], rev: Number(m[2]) }
  },

  /** The Download button holds the labels of the last export: a hurried user exported, went on editing (or
   * clicked while the export ran), and later pressed Download believing the file current; it held none of the
   * later edits. Once the labels shown are newer than the file, the button says so (class ``mv-stale``). The
   * page's poll is the one caller (every 100 ms): it sees a new export, new labels and a re-render by Gradio (which
   * drops the class set before) alike, and writes only what the button does not show already. An edit still on its
   * way counts: a click made just before Download was not in the file, and the mark came only with its answer. */
  markDownload(this: Viewer): void {
    const button = document.querySelector('#download')
    if (!button || !this.exported) return
    const queued = this.editsQueued > 0
    if (!queued && this.rev < 0) return  // labels on their way: judged when they are shown
    const older = queued || (this.revBoot ?? null) !== this.exported.boot || this.rev > this.exported.rev
    const title = older ? STALE_TITLE : null
    if (button.classList.contains('mv-stale') !== older) button.classList.toggle('mv-stale', older)
    if (button.getAttribute('title') === title) return
    if (title) button.setAttribute('title', title)
    else button.removeAttribute('title')
  },
}

export type DownloadMarkMethods = typeof downloadMarkMethods
