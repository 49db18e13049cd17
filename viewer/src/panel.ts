// The panel's DOM: the toolbar, the stage (NiiVue's canvas and the overlay), the status line, the legend and the
// Shortcuts table. Its ids (#tool-point, #undo-btn, #viewer-canvas, #viewer-status ...) are what the page's Python
// side and the e2e tests address.
import type { Viewer } from './viewer'
import type { Tool } from './types'
import { el } from './util'
import { SHORTCUTS } from './keyboard'

export type Panel = {
  stage: HTMLElement; canvas: HTMLCanvasElement; overlay: HTMLCanvasElement; info: HTMLElement
  statusLine: HTMLElement; legend: HTMLElement
}

/** Build the panel inside ``root`` (emptied first); its buttons act on ``v``. */
export function buildPanel(v: Viewer, root: HTMLElement): Panel {
    root.innerHTML = ''
    root.classList.add('mv-root')
    const bar = el('div', { class: 'mv-toolbar', role: 'toolbar' })
    const tools: [Tool, string, string][] = [
      ['point', 'Point', 'P: click for a positive point, shift+click for a negative one; drag draws a box'],
      ['box', 'Box', 'B: drag a box around the structure'],
      ['brush', 'Brush', 'R: paint the active label (size with [ and ])'],
      ['erase', 'Eraser', 'E: erase the active label'],
      ['navigate', 'Navigate', 'V: click moves the crosshair; no prompts'],
    ]
    for (const [tool, name, tip] of tools) {
      const b = el('button', { class: 'mv-btn mv-tool', 'data-tool': tool, id: `tool-${tool}`, title: tip, type: 'button' }, name)
      b.addEventListener('click', () => v.setTool(tool))
      bar.append(b)
    }
    const neg = el('label', { class: 'mv-check', title: 'Clicks add negative points (or hold shift)' })
    const negBox = el('input', { type: 'checkbox', id: 'tool-negative' }) as HTMLInputElement
    negBox.addEventListener('change', () => { v.negative = negBox.checked })
    neg.append(negBox, document.createTextNode(' negative'))
    bar.append(neg)
    const size = el('label', { class: 'mv-size', title: 'Brush diameter in pixels of the image grid ([ and ])' }, 'size ')
    const sizeIn = el('input', { type: 'number', id: 'brush-size', min: '1', max: '100', value: String(v.brushPx) }) as HTMLInputElement
    sizeIn.addEventListener('change', () => v.setBrush(Number(sizeIn.value)))
    size.append(sizeIn, document.createTextNode(' px'))
    bar.append(size)
    const sep = el('span', { class: 'mv-sep' })
    bar.append(sep)
    const actions: [string, string, string, () => void][] = [
      ['new-object', 'New object', 'N: the next prompt starts another object (the others stay)', () => v.enqueue({ kind: 'new_object' })],
      ['undo-btn', 'Undo', 'ctrl+Z', () => v.history('undo', 'Undo')],
      ['redo-btn', 'Redo', 'ctrl+Y', () => v.history('redo', 'Redo')],
      ['layout-btn', '3 views', 'M: one view or linked axial, coronal and sagittal views', () => v.toggleLayout()],
      ['outline-btn', 'Outline', 'O: outline or fill', () => v.toggleOutline()],
      ['suggest-btn', 'Suggest', 'G: after each prompt, mark where the answer is least sure (a dashed ring: + to add, − to remove)', () => v.toggleSuggest()],
      ['zoom-reset', 'Fit', '0: reset zoom and pan', () => v.resetZoom()],
    ]
    for (const [id, name, tip, fn] of actions) {
      const b = el('button', { class: 'mv-btn', id, title: tip, type: 'button' }, name)
      b.addEventListener('click', fn)
      bar.append(b)
    }
    const opacity = el('label', { class: 'mv-size', title: 'Label opacity' }, 'opacity ')
    const opIn = el('input', { type: 'range', id: 'label-opacity', min: '0', max: '1', step: '0.05', value: String(v.opacity) }) as HTMLInputElement
    opIn.addEventListener('input', () => { v.opacity = Number(opIn.value); v.applyLabelLook() })
    opacity.append(opIn)
    bar.append(opacity)

    const stage = el('div', { class: 'mv-stage', id: 'viewer-stage', tabindex: '0' })
    const canvas = el('canvas', { id: 'viewer-canvas' })
    const overlay = el('canvas', { class: 'mv-overlay', id: 'viewer-overlay' })
    const info = el('div', { class: 'mv-info', id: 'viewer-info' })
    stage.append(canvas, overlay, info)
    const below = el('div', { class: 'mv-below' })
    const statusLine = el('div', { class: 'mv-status', id: 'viewer-status', role: 'status', 'aria-live': 'polite' })
    const legend = el('div', { class: 'mv-legend', id: 'viewer-legend' })
    const help = el('details', { class: 'mv-help', id: 'viewer-shortcuts' })
    help.append(el('summary', {}, 'Shortcuts'))
    const table = el('table')
    for (const [k, v] of SHORTCUTS) {
      const tr = el('tr')
      tr.append(el('td', {}, k), el('td', {}, v))
      table.append(tr)
    }
    help.append(table)
    below.append(legend, help)
    root.append(bar, stage, statusLine, below)
  return { stage, canvas, overlay, info, statusLine, legend }
}
