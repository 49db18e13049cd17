// medseg's image panel: NiiVue (WebGL) with the study and its labels in the browser.
// Paging, zoom, pan and window/level never call the server; prompts go to /viewer-api in order
// (a client-side queue: none is dropped) and come back as the changed label plane. Requests carry
// the HttpOnly session cookie (same origin); this script never sees a token or a session id.
// This file mounts the viewer (viewer.ts) once Gradio has rendered its root; tests reach it as window.medsegViewer.
import './viewer.css'
import { Viewer } from './viewer'

function mount(): void {
  const root = document.getElementById('medseg-viewer')
  if (!root || root.dataset.mounted) return
  root.dataset.mounted = '1'
  const viewer = new Viewer(root)
  ;(window as any).medsegViewer = viewer
  viewer.start().catch((e) => viewer.showError(`the viewer could not start: ${e}`))
}

const observer = new MutationObserver(() => mount())
observer.observe(document.documentElement, { childList: true, subtree: true })
mount()
