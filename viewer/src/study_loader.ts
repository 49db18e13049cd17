// Volume loading: the study's image and its label map from /viewer-api, one study at a time.
import { NVImage } from '@niivue/niivue'
import type { Viewer } from './viewer'
import type { State } from './types'
import { apiUrl, traceMark } from './util'

export const studyLoaderMethods = {
  /** Is the server's label map (revision ``rev`` of server process ``boot``) newer than the one shown? Revisions
   * count within one server process: one of another process (restarted) is news, whatever its number; the
   * revision was the wall clock, and a server restarted with its clock stepped back seemed to have older labels. */
  labelsNewer(this: Viewer, boot: string | undefined, rev: number): boolean {
    return (boot !== undefined && boot !== this.revBoot) || rev > this.rev
  },

  async loadStudy(this: Viewer, s: State): Promise<void> {
    this.dropDragForStudy(s.name ?? 'another study')
    this.keyCursor = null; this.keyMark = null  // a place on the last study
    this.study = s.study
    this.locked = this.storedLocks()  // this study's: label 1 locked on the last study is another structure
    this.loadFailed = null
    this.showStatus(`Loading ${s.name ?? 'the study'} into the viewer…`)
    const nv = this.nv
    try {
      while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1])
      this.labelsVol = null
      await nv.loadVolumes([{ url: apiUrl(`volume/${s.study}.nii.gz`), name: 'study.nii.gz' } as any])
      this.slices.attach(nv.volumes[0], !!s.rgb)
      this.fitCrosshair()
      this.rev = -1
      this.wl = null
      this.windowOwn = null  // a drag on the last study: its window is not this one's
      await this.reloadLabels()
      this.currentView = s.view || 'axial'
      this.three = false
      this.applyLayout()
      if (s.slice_mm) this.moveTo(s.slice_mm, s.view || 'axial')
      if (s.window) this.applyWindow(s.window)
      if (s.opacity !== undefined) this.opacity = s.opacity
      this.object = s.object ?? null
      this.applyLabelLook()
      this.resetZoom()
      this.showInfo()
      const f = this.following
      this.following = null
      // a poll may see the study this page is opening before the open's answer reaches it: that answer puts a new
      // "Opened <name>" on the page's status line since the poll, and then it is no other tab's
      const mine = f !== null && this.pageStamps !== f.stamps && this.pageStatus.startsWith(`Opened ${s.name ?? ''}`)
      if (this.loadRefusal === this.statusSeq) this.errorAt = -1  // "still loading: not placed": now it is shown
      if (f && f.study === s.study && !mine) {
        this.errorAt = -1  // an error shown was about the study left: this line is the news now
        this.showStatus(`Another tab opened ${f.name}; this tab follows it. Your labels on ${f.from} are kept: ` +
          'open it again to go back to them.')
      } else this.showStatus(`${s.name ?? 'Study'} in the viewer. Click on a structure or drag a box.`)
      this.root.setAttribute('data-study', s.study || '')
      this.bringIntoView()
      this.readyWanted = true
      this.requestEncode()
    } catch (e) {
      // nothing of it stays: opening it again loads it afresh (the same study was taken as loaded, and the viewer stayed
      // black under "Opened ... Ready")
      this.study = null
      while (nv.volumes.length) nv.removeVolume(nv.volumes[nv.volumes.length - 1])
      this.labelsVol = null
      this.root.removeAttribute('data-study')
      this.loadFailed = { stamps: this.pageStamps }
      this.showError(`could not load ${s.name ?? 'the study'} into the viewer (${e}): open it again`)
    } finally {
      this.loading = null
    }
  },

  /** A study just shown: its image in the window. A narrow window stacks the page's columns, the viewer's first
   * (app/ui.py), and Open sample or Upload below it left the page scrolled past the image just opened. */
  bringIntoView(this: Viewer): void {
    const r = this.stage.getBoundingClientRect()
    if (r.top < 0 || r.bottom > window.innerHeight) this.root.scrollIntoView({ block: 'start' })
  },

  /** The crosshair's thickness for the study loaded: NiiVue draws it one voxel wide, a hairline on a 256 x 256 CT but
   * an eighth of an 8 x 8 picture, a broad bar hiding the pixels and labels under it. It is now at most 1/256 of the
   * study's largest side (one voxel on the CT, as before). */
  fitCrosshair(this: Viewer): void {
    const v = this.nv.volumes[0] as any
    const dims = v?.dimsRAS as number[] | undefined, pix = v?.pixDimsRAS as number[] | undefined
    if (!dims || !pix) return
    const voxel = Math.min(pix[1], pix[2], pix[3])
    const side = Math.max(dims[1] * pix[1], dims[2] * pix[2], dims[3] * pix[3])
    this.nv.opts.crosshairWidthUnit = 'mm'
    this.nv.opts.crosshairWidth = Math.min(voxel, side / 256)
    const mesh = (this.nv as any).crosshairs3D  // NiiVue keeps its crosshair's mesh until the position moves
    if (mesh) {
      this.nv.gl.deleteBuffer(mesh.indexBuffer)
      this.nv.gl.deleteBuffer(mesh.vertexBuffer)
      ;(this.nv as any).crosshairs3D = null
    }
  },

  /** Fetch the whole label map again. One fetch at a time: a call while one runs shares it and fetches once
   * more after it (the server may have changed since that fetch began). */
  reloadLabels(this: Viewer): Promise<void> {
    if (this.reloading) { this.reloadWanted = true; return this.reloading }
    this.reloading = (async () => {
      try {
        do { this.reloadWanted = false; await this.fetchLabels() } while (this.reloadWanted)
      } finally {
        this.reloading = null
      }
    })()
    return this.reloading
  },

  async fetchLabels(this: Viewer): Promise<void> {
    traceMark('labels.reload')
    const s = this.state!
    const key = this.study
    const shown = this.rev, shownBoot = this.revBoot
    const response = await fetch(apiUrl(`labels/${key}.nii.gz`), { cache: 'no-store' })
    if (!response.ok) { this.showError(await this.errorOf(response)); return }
    const rev = Number(response.headers.get('X-Labels-Revision') ?? s.rev)
    const boot = response.headers.get('X-Labels-Boot') ?? s.boot ?? null
    const buffer = await response.arrayBuffer()
    // @ts-expect-error NiiVue's types list all 20 parameters of NVImage.new; the rest have defaults
    const vol = await NVImage.new(buffer, 'labels.nii.gz', 'gray', 1)
    // A label map (NIFTI_INTENT_LABEL): NiiVue then draws it with its integer atlas shader, one exact
    // colour per value, and can outline it. Without it the labels went through the intensity shader
    // (values scaled by cal_min/cal_max into the colour table) and Outline only made the fill opaque.
    vol.hdr!.intent_code = 1002
    if (key !== this.study) { this.reloadWanted = true; return }  // another study opened meanwhile
    // a click's patch newer than this copy came while it was fetched (or one of another server process: its order
    // is unknown): drop the copy and fetch the map again
    if ((this.rev !== shown || this.revBoot !== shownBoot) && (this.revBoot !== boot || this.rev > rev)) {
      this.reloadWanted = true
      return
    }
    if (this.labelsVol && this.labelsVol.img && vol.img && this.labelsVol.img.length === vol.img.length) {
      (this.labelsVol.img as any).set(vol.img as any)
    } else {
      if (this.labelsVol && this.nv.volumes.includes(this.labelsVol)) this.nv.removeVolume(this.labelsVol)
      this.labelsVol = vol
      // the viewer's slice shader draws the labels from its own texture (applyLabelLook uploads them)
      if (!this.slices.active) this.nv.addVolume(vol)
    }
    this.rev = rev
    this.revBoot = boot
    this.root.setAttribute('data-rev', String(rev))
    this.applyLabelLook(true)
  },
}

export type StudyLoaderMethods = typeof studyLoaderMethods
