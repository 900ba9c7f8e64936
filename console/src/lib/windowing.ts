// Window/level of the native viewer (issue 20.4): presets, and the drag that changes them
// (right: wider window, down: higher level, as on a PACS workstation). The server renders
// the slice for a window ``W,L`` within the limits it accepts (native_slices.parse_window).
export interface Window {
  width: number;
  level: number;
}

export const PRESETS: Record<'lung' | 'mediastinal', Window> = {
  lung: { width: 1500, level: -600 },
  mediastinal: { width: 400, level: 40 },
};

const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));

/** HU per dragged pixel: 4 HU per pixel, so a 500-pixel drag spans a lung window. */
export const HU_PER_PIXEL = 4;

export function dragWindow(start: Window, dx: number, dy: number): Window {
  return {
    width: Math.round(clamp(start.width + dx * HU_PER_PIXEL, 1, 10000)),
    level: Math.round(clamp(start.level + dy * HU_PER_PIXEL, -2000, 4000)),
  };
}

/** The ``window`` query value: a preset's name, or ``W,L``. */
export function windowParam(w: Window): string {
  for (const [name, preset] of Object.entries(PRESETS)) {
    if (preset.width === w.width && preset.level === w.level) return name;
  }
  return `${w.width},${w.level}`;
}

export interface View {
  zoom: number; // 1 = fit
  x: number; // pan in CSS pixels
  y: number;
}

export const MIN_ZOOM = 1;
export const MAX_ZOOM = 8;

/** Zoom by ``factor`` about the point (px, py) relative to the image centre, keeping that
 * point under the pointer. */
export function zoomAbout(view: View, factor: number, px = 0, py = 0): View {
  const zoom = clamp(view.zoom * factor, MIN_ZOOM, MAX_ZOOM);
  const k = zoom / view.zoom;
  if (zoom === MIN_ZOOM) return { zoom, x: 0, y: 0 };
  return { zoom, x: px - (px - view.x) * k, y: py - (py - view.y) * k };
}

/** The opposite side's letter, for the edge the series does not name. */
const OPPOSITE: Record<string, string> = { R: 'L', L: 'R', A: 'P', P: 'A', H: 'F', F: 'H', S: 'I', I: 'S' };

export function orientationMarkers(o: Record<string, string> | null | undefined): Record<'left' | 'right' | 'top' | 'bottom', string> | null {
  if (!o) return null;
  const pick = (edge: string, other: string) => o[edge] ?? (o[other] ? (OPPOSITE[o[other]] ?? '') : '');
  return { left: pick('left', 'right'), right: pick('right', 'left'), top: pick('top', 'bottom'), bottom: pick('bottom', 'top') };
}
