// Small helpers with no viewer state: DOM elements, byte decoding, colours, failures in words, the latency trace.

/** Latency trace (benchmarks/ui_latency.py --trace sets window.medsegTrace = []): epoch ms, the server's
 * clock ($MEDSEG_TRACE) lines up with it. Nothing is recorded unless the array is there. */
export function traceMark(event: string, fields: Record<string, unknown> = {}): void {
  const log = (window as any).medsegTrace as unknown[] | undefined
  if (log) log.push({ t: performance.timeOrigin + performance.now(), event, ...fields })
}

let traceSeq = 0

/** The next action's trace id (sent as X-Trace-Id). */
export function nextTraceId(): string {
  return String(++traceSeq)
}

export function hexToRgb(hex: string): number[] {
  const h = hex.replace('#', '')
  return [parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16)]
}

/** Base64 to bytes: the browser's own decoder where it has one; else a plain loop (Uint8Array.from with a
 * mapping callback took ~15 ms for a 256x256 uint16 plane on the loaded 2-core machine). */
export function base64Bytes(data: string): Uint8Array {
  const native = (Uint8Array as any).fromBase64
  if (typeof native === 'function') return native(data)
  const s = atob(data)
  const out = new Uint8Array(s.length)
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i)
  return out
}

/** A failed request as a person reads it: fetch's network failure is "TypeError: Failed to fetch", which said
 * "the server did not answer (TypeError: Failed to fetch), nor when asked again (TypeError: Failed to fetch)". */
export function failure(e: unknown): string {
  return e instanceof TypeError ? 'no connection' : String(e)
}

export function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, text = ''): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v)
  if (text) e.textContent = text
  return e
}

/** The header of a 409 that says the request carried a session token renewed meanwhile (``app.web_session``). */
export const RENEWED_HEADER = 'x-medseg-renewed'

/** The viewer's API under the page's origin (the session cookie goes with each request). */
export function apiUrl(what: string): string {
  return `/viewer-api/${what}`
}
