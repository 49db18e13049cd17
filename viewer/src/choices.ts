// Picks in the page's lists (Active label, Model, Alternatives) go through the viewer's queue, in order with the prompts.
import type { Viewer } from './viewer'

export const choiceMethods = {
  /** A label picked in the page's Active label box goes through the viewer's queue, in order with the prompts:
   * Gradio's own event ran before the queued prompts, and each (it names its label) made its label active again, so
   * the page went back to the old label and the next structure went into it; a click right after the pick named the
   * old label the same way. */
  queueLabelChoice(this: Viewer, e: MouseEvent): void {
    if (!e.isTrusted || e.button !== 0) return
    const option = (e.target as Element | null)?.closest?.('#label [role="option"], #model [role="option"]')
    if (option?.closest('#model')) this.modelOptionPicked(option, e)
    else if (option) this.labelOptionPicked(option, e)
  },

  /** Tab (or shift+Tab) out of one of Gradio's dropdowns (Bundled sample, Model, Window, Active label) closes its
   * list. Gradio's keydown handler reopens the list after a tick for any key but Escape, after its blur handler has
   * closed it: tabbing past the sidebar left three lists drawn over it (the first hiding Open sample) until a click
   * elsewhere. The key is kept from that handler (the browser still moves the focus), and the list's scroller is no
   * Tab stop (Chromium makes a scroller one: the Tab after Model went there, then to the page's body as the list
   * closed under it). */
  tabOutOfList(this: Viewer, e: KeyboardEvent): void {
    const input = e.target as HTMLElement | null
    if (e.key !== 'Tab' || !input?.matches?.('input[role="combobox"]')) return
    e.stopPropagation()
    for (const list of input.closest('.wrap')?.querySelectorAll<HTMLElement>('.option-list') ?? []) list.tabIndex = -1
  },

  /** A list open while its box has not the focus is closed as Escape closes it: the key just before a Tab (shift,
   * a letter) has its own reopening tick, which came after the blur on a busy page. */
  watchLists(this: Viewer): void {
    new MutationObserver((records) => {
      for (const { target } of records) {
        const input = target as HTMLElement
        if (input.matches('input[role="combobox"]') && input.getAttribute('aria-expanded') === 'true'
            && document.activeElement !== input) {
          input.dispatchEvent(new KeyboardEvent('keydown', { key: 'Escape', bubbles: true }))
        }
      }
    }).observe(document.body, { attributes: true, attributeFilter: ['aria-expanded'], subtree: true })
  },

  /** A label picked in the Active label box by keyboard (focus, ArrowDown, Enter: Gradio takes the option it
   * highlighted, class ``active``) goes through the viewer's queue as a mouse pick does: it ran at once, and the
   * prompts still queued made the old label active again. */
  queueLabelKey(this: Viewer, e: KeyboardEvent): void {
    if (!e.isTrusted || e.key !== 'Enter' || e.isComposing) return
    const box = (e.target as Element | null)?.closest?.('#label, #model')
    if (box?.id === 'model') { this.modelKey(box, e); return }
    const option = box?.querySelector('[role="option"].active')
    if (option) this.labelOptionPicked(option, e)
  },

  /** Enter in the Model box: the option Gradio would pick goes through the queue (modelOptionPicked). Gradio
   * filters the list as keys are typed, and at Enter picks the first option whose label holds the text when the
   * highlighted one does not (text that came without keys, pasted with the mouse, leaves an earlier highlight: that
   * option was sent). Text that matches no model in the open list picked nothing, and the box snapped back when it
   * lost focus, without a word: the status line now says so. */
  modelKey(this: Viewer, box: Element, e: KeyboardEvent): void {
    const input = e.target as HTMLInputElement
    const typed = (input.value ?? '').trim()
    const label = (o: Element) => (o.getAttribute('aria-label') || o.textContent || '').trim()
    // the text of the model shown (nothing typed: the arrows move over the whole list) filters nothing
    const selected = box.querySelector('[role="option"].selected')
    const filter = selected && label(selected) === typed ? '' : typed.toLowerCase()
    const holds = (o: Element) => label(o).toLowerCase().includes(filter)
    const active = box.querySelector('[role="option"].active')
    const option = active && holds(active) ? active : [...box.querySelectorAll('[role="option"]')].find(holds)
    if (option) { this.modelOptionPicked(option, e); return }
    if (!filter || !box.querySelector('[role="listbox"]')) return  // nothing typed, or the list is closed
    e.preventDefault(); e.stopImmediatePropagation()
    const shown = typed.length > 40 ? `${typed.slice(0, 40)}…` : typed
    this.showError(`Model: no model in the list matches "${shown}", so the model in use stays: pick one from the list`)
  },

  /** A model picked in the Model box, by mouse or keyboard, is the viewer's own action (kind ``model``,
   * app.viewer.actions.choose_model), sent through the queue after the prompts made before it: Gradio's event
   * switched the model at once (a model change starts a new object), so of a box and 3 quick clicks then a model
   * pick, 1 click refined the box and the other 2 began a second object on the new model. Gradio's handler never
   * sees the pick (session 15 replayed it through the list when its turn came, and under load the replay was lost
   * without a word); the answer says which model is in use, and the page's sync after it shows it in the box. The
   * option's label is sent as shown: the server knows which model it names (app.model_catalog.name_of). */
  modelOptionPicked(this: Viewer, option: Element, e: Event): void {
    const shown = option.getAttribute('aria-label') || (option.textContent ?? '').replace(/^\s*✓?\s*/, '').trim()
    if (!shown) return
    e.preventDefault(); e.stopImmediatePropagation()
    ;(document.activeElement as HTMLElement | null)?.blur?.()  // closes the list; the sync then shows the model
    const n = this.pending.length
    if (n) this.showStatus(`Model: after your ${n > 1 ? `${n} prompts` : 'prompt'} still on the way to the server…`)
    this.enqueue({ kind: 'model', model: shown })
  },

  /** The pick of one option of the Active label box, by mouse or keyboard: it goes through the queue (Gradio's own
   * handler never sees it). */
  labelOptionPicked(this: Viewer, option: Element, e: Event): void {
    const text = (option.textContent ?? '').replace(/^\s*✓?\s*/, '').trim()  // "2 · label 2" (controller.view_model)
    const d = (this.state?.labels ?? []).find((x) => `${x.value} · ${x.name}` === text)
    if (!d) return
    e.preventDefault(); e.stopImmediatePropagation()
    ;(document.activeElement as HTMLElement | null)?.blur?.()  // closes the list; the page shows the choice after the sync
    this.enqueue({ kind: 'active', label: d.value })
  },

  /** An alternative picked in *Alternatives of the first click* (a click on its radio; keys: queueAlternativeKey) is
   * the viewer's own action (kind ``alternative``), sent through the queue after the prompts made before it, with
   * the first click the list was shown for (the page's state: the list and the state come in one page, so a pick
   * made as a new page shows is judged by that page). Gradio's event reached the server before or after clicks still
   * queued, as it happened: a refinement click queued before it refined the alternative instead of the mask it was
   * made on, and after N and a first click on another structure it swapped that structure's mask for an alternative
   * of the first one. The server refuses a pick whose list is no longer the current first click's; the page's sync
   * after the answer shows the choice. */
  queueAlternative(this: Viewer, e: MouseEvent): void {
    if (!e.isTrusted) return
    const row = (e.target as Element | null)?.closest?.('#alternatives label')
    const radio = row?.querySelector('input[type="radio"]') as HTMLInputElement | null
    if (!row || !radio) return
    // a click on the radio itself comes after the browser has checked it (its activation runs first, and is undone
    // when the click is cancelled), so whether it was the one applied is read from the mousedown before it; a click
    // on the row's text comes before the radio is checked
    const applied = e.target === radio ? this.alternativeShown === radio : radio.checked
    if (!applied) this.alternativePicked(row, e)  // the one applied: nothing to change
  },

  /** Which radio of the list was checked when a mouse button went down (``queueAlternative`` reads it). */
  noteAlternativeShown(this: Viewer): void {
    const all = [...document.querySelectorAll('#alternatives input[type="radio"]')] as HTMLInputElement[]
    this.alternativeShown = all.find((r) => r.checked) ?? null
  },

  /** The list's keys: an arrow checks the next or previous radio (the browser's own move fires no click, and
   * Gradio's event took it), Space the focused one. The move is made here: focus goes there, the pick is queued, and
   * the page's sync after the answer checks it. */
  queueAlternativeKey(this: Viewer, e: KeyboardEvent): void {
    if (!e.isTrusted || e.isComposing || e.altKey || e.ctrlKey || e.metaKey) return
    const radio = (e.target as Element | null)?.closest?.('#alternatives input[type="radio"]') as HTMLInputElement
      | null
    if (!radio) return
    const all = [...document.querySelectorAll('#alternatives input[type="radio"]')] as HTMLInputElement[]
    const at = all.indexOf(radio)
    const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, ' ': 0 }[e.key]
    if (at < 0 || step === undefined) return
    const to = all[(at + step + all.length) % all.length]
    e.preventDefault(); e.stopImmediatePropagation()
    to.focus()
    const row = to.closest('label')
    if (row && !to.checked) this.alternativePicked(row, e)
  },

  /** One row of the list picked (its label ``row``), by mouse or keyboard: queued as the ``alternative`` action. */
  alternativePicked(this: Viewer, row: Element, e: Event): void {
    const which = parseInt((row.textContent ?? '').trim(), 10)  // "2 (IoU 0.87, box)" (controller.view_model)
    if (!Number.isFinite(which)) return
    e.preventDefault(); e.stopImmediatePropagation()  // the radio stays as the page shows it until the answer
    const o = this.shownState()?.object  // the page's, as the list: the viewer reads it 100 ms later
    const body: any = { kind: 'alternative', alternative: which }
    if (o && o.points.length === 1) body.first = o.points[0].mm
    const n = this.pending.length
    if (n) this.showStatus(`Alternative ${which}: after your ${n > 1 ? `${n} prompts` : 'prompt'} still on the way ` +
      'to the server…')
    this.enqueue(body)
  },
}

export type ChoiceMethods = typeof choiceMethods
