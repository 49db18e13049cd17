// The viewer's own slice shader for NiiVue's 2D views (scalar studies): why it exists.
//
// In a software WebGL renderer (SwiftShader, what headless Chromium and GPU-less machines draw with) a frame's
// cost is the slice shader run on every pixel of the image, and NiiVue's default one samples five textures
// (image, labels, its drawing layer, its colour table, its PAQD layer) where this viewer fills two: ~95 ms a
// frame on a 660x700 canvas against ~30 ms for two samples (docs/ui.md, "Where a frame's time goes").
// NiiVue also bakes the window into an RGBA copy of the volume, so each window/level step re-ran its
// reorientation pass over the whole volume. This shader reads the study's values themselves (a float texture
// in the stored voxel order, uploaded once per study) and applies the window as two uniforms, so a W/L step
// costs one frame; the labels come from NiiVue's label layer (NiiVue keeps building it from its colour table),
// with their opacity and the outline as uniforms. The outline is drawn in the plane shown (a labelled voxel
// whose neighbour in that plane has another label or none), so a label drawn on one slice shows as an
// outline; NiiVue's atlas outline looks at all 26 neighbours in 3D and drew such a label filled.
import type { Niivue, NVImage } from '@niivue/niivue'

// OUTLINE is defined in the outline program: one program each, since a software renderer runs both sides of a
// branch for every pixel (measured: the outline loop behind a uniform cost ~25 ms a frame in fill mode).
const FRAG_BODY = `
precision highp int;
precision highp float;
uniform highp sampler3D overlay;
uniform highp sampler3D intensity;
uniform mat4 rasToStored;
uniform float calMin;
uniform float calMax;
uniform float overlays;
uniform float opacity;
uniform int axCorSag;
uniform float labelOpacity;
in vec3 texPos;
out vec4 color;

// whether a voxel shows another label than colour c (or none); outside the volume: none. The label layer's
// alpha is not compared: NiiVue averages it over each voxel's 3D neighbours, so it varies inside a label.
bool otherLabel(ivec3 p, ivec3 size, vec4 c) {
  if (any(lessThan(p, ivec3(0))) || any(greaterThanEqual(p, size))) return true;
  vec4 q = texelFetch(overlay, p, 0);
  return q.a == 0.0 || q.rgb != c.rgb;
}

void main() {
  vec3 stored = (rasToStored * vec4(texPos, 1.0)).xyz;
  float v = texture(intensity, stored).r;
  float g = clamp((v - calMin) / max(calMax - calMin, 1e-6), 0.0, 1.0);
  color = vec4(g, g, g, opacity);
  if (overlays < 1.0) return;
  // labels voxel by voxel (nearest), as label maps are shown in radiology viewers
  ivec3 size = textureSize(overlay, 0);
  ivec3 p = clamp(ivec3(floor(texPos * vec3(size))), ivec3(0), size - 1);
  vec4 c = texelFetch(overlay, p, 0);
#ifdef OUTLINE
  vec4 o = vec4(0.0);
  if (c.a > 0.0) {
    // the two axes of the plane shown: axial holds z, coronal y, sagittal x
    ivec3 u = axCorSag == 2 ? ivec3(0, 1, 0) : ivec3(1, 0, 0);
    ivec3 w = axCorSag == 0 ? ivec3(0, 1, 0) : ivec3(0, 0, 1);
    bool edge = false;
    for (int a = -1; a <= 1; a++) {
      for (int b = -1; b <= 1; b++) {
        if ((a != 0 || b != 0) && otherLabel(p + a * u + b * w, size, c)) edge = true;
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

const UNIT = 11 // a texture unit NiiVue's drawing never binds (it uses 11-15 only for its grow-cut tool)

/** The study's values on the GPU and the uniforms of the viewer's slice shader. */
export class SliceShader {
  nv: Niivue
  texture: WebGLTexture | null = null
  rasToStored = new Float32Array(16)
  active = false
  static sources = { fill: FILL, outline: OUTLINE }
  programs: { fill: any; outline: any } | null = null
  labelOpacity = 1
  labelOutline = false  // which program draws (set before a frame: prepare)

  constructor(nv: Niivue) {
    this.nv = nv
  }

  /** Use the shader for this study when it can (a scalar volume in a 3D texture), else NiiVue's own.
   * Returns whether it is in use. */
  attach(vol: NVImage, rgb: boolean): boolean {
    const nv = this.nv as any
    const gl: WebGL2RenderingContext = nv.gl
    if (this.texture) { gl.deleteTexture(this.texture); this.texture = null }
    const hdr = vol.hdr as any
    const dims = hdr.dims as number[]
    const max3D = gl.getParameter(gl.MAX_3D_TEXTURE_SIZE) as number
    const usable = !rgb && !nv.opts.is2DSliceShader && hdr.datatypeCode !== 128 && hdr.datatypeCode !== 2304 &&
      Math.max(dims[1], dims[2], dims[3]) <= max3D && vol.img !== undefined
    if (usable) this.upload(gl, vol)
    if (usable && !this.programs) {
      // NiiVue compiles each (with its own vertex shader) and sets its texture units; keep both, swap in prepare
      nv.setCustomSliceShader(OUTLINE)
      const outline = nv.customSliceShader
      nv.customSliceShader = null // so that the next call does not delete it
      nv.setCustomSliceShader(FILL)
      this.programs = { fill: nv.customSliceShader, outline }
    }
    if (usable !== this.active) {
      this.active = usable
      nv.customSliceShader = usable ? this.programs!.fill : null
      nv.updateGLVolume()
    }
    return usable
  }

  upload(gl: WebGL2RenderingContext, vol: NVImage): void {
    const hdr = vol.hdr as any
    const dims = hdr.dims as number[]
    const n = dims[1] * dims[2] * dims[3]
    const slope = hdr.scl_slope || 1, inter = hdr.scl_inter || 0
    const src = vol.img as ArrayLike<number>
    const values = new Float32Array(n)
    for (let i = 0; i < n; i++) values[i] = src[i] * slope + inter // what NiiVue's window applies to
    const linear = !!gl.getExtension('OES_texture_float_linear')
    this.texture = gl.createTexture()
    gl.activeTexture(gl.TEXTURE0 + UNIT)
    gl.bindTexture(gl.TEXTURE_3D, this.texture)
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1)
    gl.texStorage3D(gl.TEXTURE_3D, 1, gl.R32F, dims[1], dims[2], dims[3])
    gl.texSubImage3D(gl.TEXTURE_3D, 0, 0, 0, 0, dims[1], dims[2], dims[3], gl.RED, gl.FLOAT, values)
    const filter = linear ? gl.LINEAR : gl.NEAREST // NiiVue's slices are linearly interpolated too
    gl.texParameteri(gl.TEXTURE_3D, gl.TEXTURE_MIN_FILTER, filter)
    gl.texParameteri(gl.TEXTURE_3D, gl.TEXTURE_MAG_FILTER, filter)
    for (const p of [gl.TEXTURE_WRAP_S, gl.TEXTURE_WRAP_T, gl.TEXTURE_WRAP_R]) gl.texParameteri(gl.TEXTURE_3D, p, gl.CLAMP_TO_EDGE)
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
    }
  }

  /** Before each frame: the program (fill or outline), the window, the label opacity and the study's texture,
   * as the shader reads them. */
  prepare(): void {
    if (!this.active || !this.texture || !this.programs) return
    const nv = this.nv as any
    const vol = nv.volumes[0]
    if (!vol) return
    const shader = this.labelOutline ? this.programs.outline : this.programs.fill
    nv.customSliceShader = shader
    const gl: WebGL2RenderingContext = nv.gl
    gl.useProgram(shader.program)
    const u = (name: string) => gl.getUniformLocation(shader.program, name)
    gl.uniform1i(u('intensity'), UNIT)
    gl.uniform1f(u('overlays'), nv.volumes.length - 1)
    gl.uniformMatrix4fv(u('rasToStored'), false, this.rasToStored)
    gl.uniform1f(u('calMin'), vol.cal_min)
    gl.uniform1f(u('calMax'), vol.cal_max)
    gl.uniform1f(u('labelOpacity'), this.labelOpacity)
    gl.activeTexture(gl.TEXTURE0 + UNIT)
    gl.bindTexture(gl.TEXTURE_3D, this.texture)
    gl.activeTexture(gl.TEXTURE0)
  }
}
