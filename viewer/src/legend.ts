// The labels' legend under the image: pick, hide and lock a label.
import type { Viewer } from './viewer'
import type { LabelDef } from './types'
import { el } from './util'

const lockKey = (study: string | null) => `medseg-locked:${study ?? ''}`

export const legendMethods = {
  /** The label the user made active last: a label choice still on its way, or the state's. H right after a pick
   * in the legend hid the label active before it (the pick's answer had not come), not the one just picked. */
  shownActive(this: Viewer): number {
    return this.chosen?.label ?? this.state?.active ?? 1
  },

  toggleHidden(this: Viewer, v: number): void {
    if (this.hidden.has(v)) this.hidden.delete(v); else this.hidden.add(v)
    this.applyLabelLook()
  },

  /** Rebuilt only when the labels changed (their values, names, colours): every page sync and label look calls it,
   *  and a rebuild between a mouse press and its release on a label's name replaced the button, so the browser sent
   *  no click and the pick was lost (the flaky label-pick e2e test of session 17). The active, hidden and locked
   *  marks change in place (markLegend): a rebuild for a new active label lost a second pick pressed while the
   *  first one's answer came (session 18). */
  renderLegend(this: Viewer): void {
    const labels = this.state?.labels ?? []
    const key = JSON.stringify(labels)
    if (key !== this.legendKey) {
      this.legendKey = key
      this.legend.innerHTML = ''
      for (const d of labels) this.legend.append(this.legendRow(d))
    }
    this.markLegend()
  },

  /** The study's locked labels as this browser keeps them (``localStorage``, per study): they lived in the page
   * only, so a reload (or Gradio's own after a lost connection) unlocked every label without a word, and a second
   * tab of the session never had them: a finished structure locked against edits took the next stroke over it. */
  storedLocks(this: Viewer): Set<number> {
    try {
      const kept = JSON.parse(localStorage.getItem(lockKey(this.study)) ?? '[]')
      return new Set(Array.isArray(kept) ? kept.filter((v) => Number.isInteger(v)) : [])
    } catch { return new Set() }  // storage refused (a private window's quota) or damaged: none kept
  },

  storeLocks(this: Viewer): void {
    try {
      if (this.locked.size) localStorage.setItem(lockKey(this.study), JSON.stringify([...this.locked]))
      else localStorage.removeItem(lockKey(this.study))
    } catch { /* storage refused: the locks hold in this page only, as before */ }
  },

  /** Another tab of this browser locked or unlocked a label of the study shown: take it now (``storage`` event). */
  locksChanged(this: Viewer, key: string | null): void {
    if (key !== lockKey(this.study)) return
    this.locked = this.storedLocks()
    this.markLegend()
  },

  /** One label's row of the legend: its colour, its name (a click makes it the active label), hide and lock. */
  legendRow(this: Viewer, d: LabelDef): HTMLElement {
    const row = el('div', { class: 'mv-label', 'data-value': String(d.value) })
    const sw = el('span', { class: 'mv-swatch' })
    sw.style.background = d.colour
    const name = el('button', { class: 'mv-name', type: 'button', title: `${d.name}: make it the active label` }, `${d.value} · ${d.name}`)
    name.addEventListener('click', () => this.enqueue({ kind: 'active', label: d.value }))
    const eye = el('button', { class: 'mv-icon mv-eye', type: 'button' })
    eye.addEventListener('click', () => this.toggleHidden(d.value))
    const lock = el('button', { class: 'mv-icon mv-lock', type: 'button', title: 'Locked labels cannot be edited' })
    lock.addEventListener('click', () => {
      if (this.locked.has(d.value)) this.locked.delete(d.value); else this.locked.add(d.value)
      this.storeLocks()
      this.renderLegend()
    })
    row.append(sw, name, eye, lock)
    return row
  },

  /** The legend's marks, set on the buttons in place: the active label, and each label's hide/show and lock. */
  markLegend(this: Viewer): void {
    const active = this.state?.active
    for (const row of this.legend.querySelectorAll<HTMLElement>('.mv-label')) {
      const v = Number(row.dataset.value)
      row.classList.toggle('mv-active', v === active)
      const set = (b: Element | null, text: string, title?: string) => {
        if (b && b.textContent !== text) b.textContent = text
        if (b && title !== undefined && b.getAttribute('title') !== title) b.setAttribute('title', title)
      }
      const hidden = this.hidden.has(v)
      set(row.querySelector('.mv-eye'), hidden ? 'show' : 'hide', hidden ? 'Show' : 'Hide')
      set(row.querySelector('.mv-lock'), this.locked.has(v) ? 'unlock' : 'lock')
    }
  },
}

export type LegendMethods = typeof legendMethods
