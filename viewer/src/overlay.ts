// Overlay painting: the object's points and box, prompts on their way, the box being drawn, the brush, the suggestion.
import type { Viewer } from './viewer'
import { DRAG_PX } from './gestures'

export const overlayMethods = {
  drawOverlay(this: Viewer): void {
    const o = this.overlay
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight
    const dpr = window.devicePixelRatio || 1
    if (o.width !== Math.round(w * dpr) || o.height !== Math.round(h * dpr)) {
      o.width = Math.round(w * dpr); o.height = Math.round(h * dpr)
    }
    const g = o.getContext('2d')!
    g.setTransform(dpr, 0, 0, dpr, 0, 0)
    g.clearRect(0, 0, w, h)
    if (!this.nv.volumes.length) return
    const point = (mm: number[], view: string, positive: boolean, pending: boolean) => {
      const p = this.toCanvas(mm, view)
      if (!p) return
      g.beginPath(); g.arc(p[0], p[1], 5, 0, 2 * Math.PI)
      g.fillStyle = positive ? 'rgb(40,220,40)' : 'rgb(240,40,40)'
      g.globalAlpha = pending ? 0.6 : 1
      g.fill(); g.globalAlpha = 1
      g.lineWidth = 1.5; g.strokeStyle = pending ? '#ffff00' : '#ffffff'; g.stroke()
    }
    const poly = (corners: number[][], view: string, colour: string, dashed: boolean) => {
      const ps = corners.map((c) => this.toCanvas(c, view))
      if (ps.some((p) => !p)) return
      g.beginPath(); ps.forEach((p, i) => (i ? g.lineTo(p![0], p![1]) : g.moveTo(p![0], p![1]))); g.closePath()
      g.setLineDash(dashed ? [5, 4] : []); g.lineWidth = 2; g.strokeStyle = colour; g.stroke(); g.setLineDash([])
    }
    const sg = this.suggestion
    if (sg) {
      const p = this.toCanvas(sg.mm, sg.view)
      if (p) {
        g.beginPath(); g.arc(p[0], p[1], 9, 0, 2 * Math.PI)
        g.setLineDash([3, 3]); g.lineWidth = 2; g.strokeStyle = '#ffd000'; g.stroke(); g.setLineDash([])
        g.font = 'bold 13px sans-serif'; g.fillStyle = '#ffd000'; g.textAlign = 'left'; g.textBaseline = 'middle'
        g.fillText(sg.positive ? '+' : '\u2212', p[0] + 12, p[1])
      }
    }
    const obj = this.object
    if (obj) {
      if (obj.box) poly(obj.box, obj.view, 'rgb(0,170,255)', false)
      for (const p of obj.points) point(p.mm, obj.view, p.positive, false)
    }
    for (const p of this.pending) {
      if (p.kind === 'point') point(p.mm[0], p.view, p.positive !== false, true)
      else if (p.kind === 'box') {
        const a = this.toCanvas(p.mm[0], p.view), b = this.toCanvas(p.mm[1], p.view)
        if (a && b) { g.setLineDash([5, 4]); g.strokeStyle = '#ffff00'; g.lineWidth = 2; g.strokeRect(a[0], a[1], b[0] - a[0], b[1] - a[1]); g.setLineDash([]) }
      } else {
        g.strokeStyle = 'rgba(255,255,0,0.6)'; g.lineWidth = 2; g.beginPath()
        p.mm.forEach((m, i) => { const c = this.toCanvas(m, p.view); if (c) (i ? g.lineTo(c[0], c[1]) : g.moveTo(c[0], c[1])) }); g.stroke()
      }
    }
    const d = this.drag
    const first = d ? this.boxStart(d) : null
    if (d && first && (this.tool === 'point' || this.tool === 'box') && Math.hypot(d.x - d.x0, d.y - d.y0) >= DRAG_PX) {
      g.setLineDash([6, 4]); g.strokeStyle = 'rgb(0,170,255)'; g.lineWidth = 2
      g.strokeRect(first[0], first[1], d.x - first[0], d.y - first[1]); g.setLineDash([])
    }
    if ((this.tool === 'brush' || this.tool === 'erase') && this.hover) {
      const r = this.brushRadiusCss(this.hover[0], this.hover[1])
      g.beginPath(); g.arc(this.hover[0], this.hover[1], Math.max(2, r), 0, 2 * Math.PI)
      g.setLineDash(this.tool === 'erase' ? [4, 3] : []); g.lineWidth = 1.5
      g.strokeStyle = this.tool === 'erase' ? '#ff6060' : '#ffff00'; g.stroke(); g.setLineDash([])
      if (d) {
        g.strokeStyle = this.tool === 'erase' ? 'rgba(255,96,96,0.5)' : 'rgba(255,255,0,0.5)'
        g.lineWidth = 2 * r; g.lineCap = 'round'; g.beginPath()
        for (const piece of [...d.done, d.stroke]) {
          g.beginPath()
          piece.forEach((m, i) => { const c = this.toCanvas(m, d.view); if (c) (i ? g.lineTo(c[0], c[1]) : g.moveTo(c[0], c[1])) })
          g.stroke()
        }
        g.lineCap = 'butt'
      }
    }
    this.drawKeyCursor(g)
  },

  toggleSuggest(this: Viewer): void {
    this.suggestOn = !this.suggestOn
    this.root.querySelector('#suggest-btn')?.classList.toggle('mv-on', this.suggestOn)
    if (!this.suggestOn) { this.suggestion = null; this.drawOverlay() }
  },
}

export type OverlayMethods = typeof overlayMethods
