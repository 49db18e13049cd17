// The viewer's own slice shader for NiiVue's 2D views (scalar studies): why it exists.
//
// In a software WebGL renderer (SwiftShader, what headless Chromium and GPU-less machines draw with) a frame's
// cost is the slice shader run on every pixel of the image. NiiVue's default one samples five textures (image,
// labels, its drawing layer, its colour table, its PAQD layer), and a software renderer runs every branch of
// it for every pixel (the 3D outline's 18 extra samples too): ~95 ms a frame on the 660x700 canvas, against
// ~30 ms here (docs/ui.md, "Where a frame's time goes"). NiiVue also bakes the window into an RGBA copy of the
// volume, so each window/level step re-ran its reorientation pass over the whole volume; and each click's
// label plane re-ran it over the whole label map.
//
// Here the study's values (a float texture in the stored voxel order, uploaded once per study) are windowed in
// the shader, so a W/L step is two uniforms and one frame; the labels are an integer texture in the stored
// order with a colour table, so a click's answer is one plane's upload; opacity and outline are uniforms.
// The outline is taken in the plane shown (a labelled voxel with another label, or none, among its 8
// neighbours in that plane), so a label drawn on one slice shows as its border; NiiVue's atlas outline works in
// 3D and did not draw such a label at all. RGB studies keep NiiVue's own shader and label layer.
import type { Niivue, NVImage } from '@niivue/niivue'

// OUTLINE is defined in the outline program: one program each, since a software renderer runs both sides of a
// branch for every pixel (measured: the outline loop behind a uniform cost ~25 ms a frame in fill mode).
const FRAG_BODY = `
precision highp int;
precision highp float;
uniform highp sampler3D intensity;
uniform highp usampler3D labelMap;
uniform highp sampler2D labelLut;
uniform mat4 rasToStored;
uniform ivec3 storedAxis;
uniform float calMin;
uniform float calMax;
uniform int hasLabels;
uniform float opacity;
uniform int axCorSag;
uniform float labelOpacity;
in vec3 texPos;
out vec4 color;

// the colour of label value v (alpha 0: none or hidden)
vec4 lutColour(uint v) {
  int n = textureSize(labelLut, 0).x;
  if (v == 0u || int(v) >= n) return vec4(0.0);
  return texelFetch(labelLut, ivec2(int(v), 0), 0);
}

uint labelAt(ivec3 p, ivec3 size) {
  if (any(lessThan(p, ivec3(0))) || any(greaterThanEqual(p, size))) return 0u;
  return texelFetch(labelMap, p, 0).r;
}

void main() {
  vec3 stored = (rasToStored * vec4(texPos, 1.0)).xyz;
  float v = texture(intensity, stored).r;
  float g = clamp((v - calMin) / max(calMax - calMin, 1e-6), 0.0, 1.0);
  color = vec4(g, g, g, opacity);
  if (hasLabels == 0) return;
  // labels voxel by voxel (nearest), as label maps are shown in radiology viewers
  ivec3 size = textureSize(labelMap, 0);
  ivec3 p = clamp(ivec3(floor(stored * vec3(size))), ivec3(0), size - 1);
  uint value = texelFetch(labelMap, p, 0).r;
  vec4 c = lutColour(value);
#ifdef OUTLINE
  vec4 o = vec4(0.0);
  if (c.a > 0.0) {
    // the stored axes of the plane shown (axial holds RAS z, coronal y, sagittal x)
    int through = axCorSag == 0 ? storedAxis.z : (axCorSag == 1 ? storedAxis.y : storedAxis.x);
    ivec3 u = through == 0 ? ivec3(0, 1, 0) : ivec3(1, 0, 0);
    ivec3 w = through == 2 ? ivec3(0, 1, 0) : ivec3(0, 0, 1);
    bool edge = false;
    for (int a = -1; a <= 1; a++) {
      for (int b = -1; b <= 1; b++) {
        if ((a != 0 || b != 0) && labelAt(p + a * u + b * w, size) != value) edge = true;
      }
    }
    if (edge) o = vec4(c.rgb, 1.0);
  }
#else
  vec4 o = vec4(c.rgb, c.a * labelOpacity);
#endif
  float a = color.a + o.a * (1.0 - color.a);
  if (a == 0.0) return;
  color.rgb = mix(color.rgb, o.rgb, o.a / a);
  color.a = a;
}`
const FILL = '#version 300 es\n' + FRAG_BODY
const OUTLINE = '#version 300 es\n#define OUTLINE 1\n' + FRAG_BODY

// texture units NiiVue's drawing never binds (it uses 11-15 only for its grow-cut tool)
const INTENSITY_UNIT = 11, LABEL_UNIT = 12, LUT_UNIT = 13

/** The study's values and labels on the GPU and the uniforms of the viewer's slice shader. */
export class SliceShader {
  nv: Niivue
  texture: WebGLTexture | null = null
  labels: WebGLTexture | null = null
  lut: WebGLTexture | null = null
  dims: number[] = []
  rasToStored = new Float32Array(16)
  storedAxis = [0, 1, 2] // the stored axis along each RAS axis
  active = false
  labelOpacity = 1
  labelOutline = false // which program draws (set before a frame: prepare)
  programs: { fill: any; outline: any } | null = null
  planeUploads = 0 // a click's answer: one plane (counted for the e2e test)
  fullUploads = 0

  constructor(nv: Niivue) {
    this.nv = nv
  }

  get gl(): WebGL2RenderingContext {
    return (this.nv as any).gl
  }

  /** Use the shader for this study when it can (a scalar volume in a 3D texture), else NiiVue's own.
   * Returns whether it is in use. */
  attach(vol: NVImage, rgb: boolean): boolean {
    const nv = this.nv as any
    const gl = this.gl
    for (const t of [this.texture, this.labels, this.lut]) if (t) gl.deleteTexture(t)
    this.texture = this.labels = this.lut = null
    const hdr = vol.hdr as any
    const dims = hdr.dims as number[]
    const max3D = gl.getParameter(gl.MAX_3D_TEXTURE_SIZE) as number
    const usable = !rgb && !nv.opts.is2DSliceShader && hdr.datatypeCode !== 128 && hdr.datatypeCode !== 2304 &&
      Math.max(dims[1], dims[2], dims[3]) <= max3D && vol.img !== undefined
    if (usable) this.upload(vol)
    this.active = usable && this.programs !== null
    // no NiiVue pass needed: the next frame draws with the program (prepare)
    nv.customSliceShader = this.active ? this.programs!.fill : null
    return usable
  }

  /** Compile the fill and outline programs, once, before any study is open (each compile makes NiiVue run
   * updateGLVolume, which costs nothing without volumes but hundreds of ms in a software renderer with one). */
  compile(): void {
    const nv = this.nv as any
    const gl = this.gl
    // NiiVue compiles each (with its own vertex shader) and sets its texture units; keep both, swap in prepare
    nv.setCustomSliceShader(OUTLINE)
    const outline = nv.customSliceShader
    nv.customSliceShader = null // so that the next call does not delete it
    nv.setCustomSliceShader(FILL)
    this.programs = { fill: nv.customSliceShader, outline }
    nv.customSliceShader = null // NiiVue's own until a study can use them (attach)
    for (const shader of [this.programs.fill, this.programs.outline]) { // a sampler left on unit 0 fails each draw
      gl.useProgram(shader.program)
      gl.uniform1i(gl.getUniformLocation(shader.program, 'intensity'), INTENSITY_UNIT)
      gl.uniform1i(gl.getUniformLocation(shader.program, 'labelMap'), LABEL_UNIT)
      gl.uniform1i(gl.getUniformLocation(shader.program, 'labelLut'), LUT_UNIT)
    }
  }

  texture3D(unit: number, format: number, dims: number[], filter: number): WebGLTexture {
    const gl = this.gl
    const t = gl.createTexture()!
    gl.activeTexture(gl.TEXTURE0 + unit)
    gl.bindTexture(gl.TEXTURE_3D, t)
    gl.texStorage3D(gl.TEXTURE_3D, 1, format, dims[1], dims[2], dims[3])
    gl.texParameteri(gl.TEXTURE_3D, gl.TEXTURE_MIN_FILTER, filter)
    gl.texParameteri(gl.TEXTURE_3D, gl.TEXTURE_MAG_FILTER, filter)
    for (const p of [gl.TEXTURE_WRAP_S, gl.TEXTURE_WRAP_T, gl.TEXTURE_WRAP_R]) gl.texParameteri(gl.TEXTURE_3D, p, gl.CLAMP_TO_EDGE)
    return t
  }

  upload(vol: NVImage): void {
    const gl = this.gl
    const hdr = vol.hdr as any
    const dims = hdr.dims as number[]
    this.dims = dims.slice(0, 4)
    const n = dims[1] * dims[2] * dims[3]
    const slope = hdr.scl_slope || 1, inter = hdr.scl_inter || 0
    const src = vol.img as ArrayLike<number>
    const values = new Float32Array(n)
    for (let i = 0; i < n; i++) values[i] = src[i] * slope + inter // what NiiVue's window applies to
    const linear = !!gl.getExtension('OES_texture_float_linear') // NiiVue's slices are linearly interpolated too
    this.texture = this.texture3D(INTENSITY_UNIT, gl.R32F, dims, linear ? gl.LINEAR : gl.NEAREST)
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1)
    gl.texSubImage3D(gl.TEXTURE_3D, 0, 0, 0, 0, dims[1], dims[2], dims[3], gl.RED, gl.FLOAT, values)
    gl.activeTexture(gl.TEXTURE0)
    // NiiVue's slices sample in RAS texture space (its volume texture is the study flipped and permuted to
    // RAS, permRAS); map that onto the stored order: stored axis |perm[r]|-1 runs along RAS axis r, backwards
    // where perm[r] < 0. Column-major, for M * v.
    const perm = (vol as any).permRAS as number[]
    const m = this.rasToStored
    m.fill(0)
    m[15] = 1
    for (let r = 0; r < 3; r++) {
      const s = Math.abs(perm[r]) - 1
      const flip = perm[r] < 0
      m[r * 4 + s] = flip ? -1 : 1
      m[12 + s] = flip ? 1 : 0
      this.storedAxis[r] = s
    }
  }

  /** The whole label map (uint16, stored order, the study's grid). */
  uploadLabels(img: Uint16Array): void {
    const gl = this.gl
    const d = this.dims
    if (!this.labels) this.labels = this.texture3D(LABEL_UNIT, gl.R16UI, d, gl.NEAREST)
    gl.activeTexture(gl.TEXTURE0 + LABEL_UNIT)
    gl.bindTexture(gl.TEXTURE_3D, this.labels)
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1)
    gl.texSubImage3D(gl.TEXTURE_3D, 0, 0, 0, 0, d[1], d[2], d[3], gl.RED_INTEGER, gl.UNSIGNED_SHORT, img)
    gl.activeTexture(gl.TEXTURE0)
    this.fullUploads++
  }

  /** One plane of the label map, as the server answers a prompt: numpy axis 0 (k), 1 (j) or 2 (i) of the
   * (k, j, i) array, laid out as that plane's rows. */
  uploadPlane(axis: number, index: number, values: Uint16Array): void {
    if (!this.labels) return
    const gl = this.gl
    const [, ni, nj, nk] = this.dims
    const [x, y, z, w, h, dd] = axis === 0 ? [0, 0, index, ni, nj, 1] : axis === 1 ? [0, index, 0, ni, 1, nk] : [index, 0, 0, 1, nj, nk]
    gl.activeTexture(gl.TEXTURE0 + LABEL_UNIT)
    gl.bindTexture(gl.TEXTURE_3D, this.labels)
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1)
    gl.texSubImage3D(gl.TEXTURE_3D, 0, x, y, z, w, h, dd, gl.RED_INTEGER, gl.UNSIGNED_SHORT, values)
    gl.activeTexture(gl.TEXTURE0)
    this.planeUploads++
  }

  /** The label colours: RGBA (0-255) per label value from 0, alpha 0 for none or hidden. */
  setColours(rgba: Uint8Array): void {
    const gl = this.gl
    if (this.lut) gl.deleteTexture(this.lut)
    this.lut = gl.createTexture()
    gl.activeTexture(gl.TEXTURE0 + LUT_UNIT)
    gl.bindTexture(gl.TEXTURE_2D, this.lut)
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1)
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, rgba.length / 4, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, rgba)
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST)
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST)
    gl.activeTexture(gl.TEXTURE0)
  }

  /** Before each frame: the program (fill or outline), the window, the label opacity and the textures, as the
   * shader reads them. */
  prepare(): void {
    if (!this.active || !this.texture || !this.programs) return
    const nv = this.nv as any
    const vol = nv.volumes[0]
    if (!vol) return
    const shader = this.labelOutline ? this.programs.outline : this.programs.fill
    nv.customSliceShader = shader
    const gl = this.gl
    gl.useProgram(shader.program)
    const u = (name: string) => gl.getUniformLocation(shader.program, name)
    gl.uniform1i(u('intensity'), INTENSITY_UNIT)
    gl.uniform1i(u('labelMap'), LABEL_UNIT)
    gl.uniform1i(u('labelLut'), LUT_UNIT)
    gl.uniform1i(u('hasLabels'), this.labels && this.lut ? 1 : 0)
    gl.uniformMatrix4fv(u('rasToStored'), false, this.rasToStored)
    gl.uniform3i(u('storedAxis'), this.storedAxis[0], this.storedAxis[1], this.storedAxis[2])
    gl.uniform1f(u('calMin'), vol.cal_min)
    gl.uniform1f(u('calMax'), vol.cal_max)
    gl.uniform1f(u('labelOpacity'), this.labelOpacity)
    const bind = (unit: number, target: number, t: WebGLTexture | null) => { gl.activeTexture(gl.TEXTURE0 + unit); gl.bindTexture(target, t) }
    bind(INTENSITY_UNIT, gl.TEXTURE_3D, this.texture)
    bind(LABEL_UNIT, gl.TEXTURE_3D, this.labels)
    bind(LUT_UNIT, gl.TEXTURE_2D, this.lut)
    gl.activeTexture(gl.TEXTURE0)
  }
}
