// The label layer on the GPU: colours, visibility, outline, opacity and a click's one-plane patch.
import type { Viewer } from './viewer'
import { base64Bytes, hexToRgb, traceMark } from './util'

export const labelLayerMethods = {
  /** The label layer's colours, visibility, outline and opacity. Each page state calls it, but the GPU
   * pass (NiiVue's refresh of the label layer, hundreds of ms in a software renderer) runs only when the look
   * changed or ``upload`` asks for the label voxels to go to the GPU again. With the viewer's slice shader
   * (slice_shader.ts) the opacity and the outline are uniforms: changing them costs one frame. */
  applyLabelLook(this: Viewer, upload = false): void {
    const vol = this.labelsVol
    const labels = this.state?.labels ?? []
    if (!vol) return
    const own = this.slices.active
    const look = JSON.stringify(own ? [labels, [...this.hidden].sort(), 'own'] : [labels, [...this.hidden].sort(), this.outline, this.opacity])
    if (!upload && vol === this.lookOf && look === this.look) {
      if (own) this.drawLabelUniforms()
      this.renderLegend()
      return
    }
    traceMark('labelLook')
    this.lookOf = vol
    this.look = look
    const max = Math.max(1, ...labels.map((d) => d.value))
    const R = [0], G = [0], B = [0], A = [0], I = [0], names = ['']
    for (let v = 1; v <= max; v++) {
      const d = labels.find((x) => x.value === v)
      const [r, g, b] = d ? hexToRgb(d.colour) : [255, 255, 255]
      R.push(r); G.push(g); B.push(b); A.push(this.hidden.has(v) ? 0 : 255); I.push(v); names.push(d?.name ?? String(v))
    }
    vol.setColormapLabel({ R, G, B, A, I, labels: names } as any)
    if (own) {
      // the viewer's textures: the label values (uploaded when asked) and a colour per value; the shader applies
      // the opacity and draws the outline
      const lut = new Uint8Array((max + 1) * 4)
      for (let v = 1; v <= max; v++) lut.set([R[v], G[v], B[v], A[v]], v * 4)
      this.slices.setColours(lut)
      if (upload) this.slices.uploadLabels(vol.img as Uint16Array)
      this.slices.labelOpacity = this.opacity
      this.slices.labelOutline = this.outline
      this.shownLook = JSON.stringify([this.opacity, this.outline])
      this.nv.drawScene()
    } else {
      vol.opacity = this.outline ? 0 : this.opacity // outline: borders opaque, the inside clear
      // the option itself: NiiVue's setAtlasOutline runs updateGLVolume on its own, a second full pass
      ;(this.nv.opts as any).atlasOutline = this.outline ? 1 : 0
      ;(this.nv.opts as any).atlasActiveIndex = 0
      this.nv.updateGLVolume()
    }
    this.renderLegend()
  },

  /** The label opacity and outline of the viewer's slice shader: one frame when they changed, else nothing. */
  drawLabelUniforms(this: Viewer): void {
    const shown = JSON.stringify([this.opacity, this.outline])
    if (shown === this.shownLook) return
    this.shownLook = shown
    this.slices.labelOpacity = this.opacity
    this.slices.labelOutline = this.outline
    this.nv.drawScene()
  },

  toggleOutline(this: Viewer): void {
    this.outline = !this.outline
    const b = this.root.querySelector('#outline-btn')
    if (b) b.textContent = this.outline ? 'Fill' : 'Outline'
    this.applyLabelLook()
  },

  writePatch(this: Viewer, p: { axis: number; index: number; shape: number[]; data: string }): void {
    const vol = this.labelsVol!
    const values = new Uint16Array(base64Bytes(p.data).buffer)
    const img = vol.img as any
    const hdr = vol.hdr!
    const ni = hdr.dims[1], nj = hdr.dims[2]
    const [a, b] = p.shape
    if (p.axis === 0) {
      img.set(values, p.index * ni * nj)
    } else if (p.axis === 1) {
      for (let k = 0; k < a; k++) for (let i = 0; i < b; i++) img[k * ni * nj + p.index * ni + i] = values[k * b + i]
    } else {
      for (let k = 0; k < a; k++) for (let j = 0; j < b; j++) img[k * ni * nj + j * ni + p.index] = values[k * b + j]
    }
    if (this.slices.active) {
      // the viewer's label texture: this plane alone goes to the GPU, then one frame
      this.slices.uploadPlane(p.axis, p.index, values)
      this.nv.drawScene()
    } else this.refreshLabels()
  },

  /** Upload the patched labels and redraw: the label layer alone (NiiVue's refreshLayers on layer 1). Its
   * texture does not depend on the image layer's, so redoing that one too (updateGLVolume: the image's
   * pass and its 3D gradient, most of the cost) gave the same pixels (checked: canvas equal to a full
   * updateGLVolume after clicks, in one view, three views and outline mode). */
  refreshLabels(this: Viewer): void {
    if (this.nv.volumes[1] !== this.labelsVol) { this.nv.updateGLVolume(); return }
    this.nv.refreshLayers(this.labelsVol!, 1)
    this.nv.drawScene()
  },
}

export type LabelLayerMethods = typeof labelLayerMethods
