// The data of the per-slice P(COVID) plot: one point per kept slice with a score, and the
// dropped slices marked by reason along the same axis.
export interface SliceLike {
  index: number;
  kept: boolean;
  drop_reason: string | null;
  probabilities: Record<string, number> | null;
  heatmap_url: string | null;
}

export interface PlotData {
  x: number[]; // slice index of each kept slice
  y: number[]; // its P(COVID)
  dropped: { index: number; reason: string }[];
  reasons: string[]; // distinct drop reasons, sorted
  heatmaps: number[]; // slice indices with a Grad-CAM heatmap
}

export const REASON_LABELS: Record<string, string> = {
  no_lung: 'no lung',
  near_duplicate: 'near duplicate',
  high_contrast: 'high contrast',
};

export function plotData(slices: SliceLike[]): PlotData {
  const sorted = [...slices].sort((a, b) => a.index - b.index);
  const x: number[] = [];
  const y: number[] = [];
  const dropped: { index: number; reason: string }[] = [];
  const heatmaps: number[] = [];
  for (const s of sorted) {
    if (s.kept && s.probabilities && typeof s.probabilities.COVID === 'number') {
      x.push(s.index);
      y.push(s.probabilities.COVID);
    } else if (!s.kept) {
      dropped.push({ index: s.index, reason: s.drop_reason ?? 'unknown' });
    }
    if (s.heatmap_url) heatmaps.push(s.index);
  }
  const reasons = [...new Set(dropped.map((d) => d.reason))].sort();
  return { x, y, dropped, reasons, heatmaps };
}

/** uPlot's aligned data: one x axis of every slice, P(COVID) where kept (null elsewhere)
 * and one series per drop reason plotted at y=0 where dropped for that reason. */
export function alignedSeries(data: PlotData): { x: number[]; series: (number | null)[][] } {
  const all = [...new Set([...data.x, ...data.dropped.map((d) => d.index)])].sort((a, b) => a - b);
  const score = new Map(data.x.map((xi, i) => [xi, data.y[i]]));
  const reasonOf = new Map(data.dropped.map((d) => [d.index, d.reason]));
  const series: (number | null)[][] = [all.map((i) => score.get(i) ?? null)];
  for (const reason of data.reasons) {
    series.push(all.map((i) => (reasonOf.get(i) === reason ? 0 : null)));
  }
  return { x: all, series };
}

/** The kept slice after/before ``current`` (clamped), for stepping through the viewer. */
export function stepKept(kept: number[], current: number, delta: number): number {
  if (kept.length === 0) return current;
  const at = kept.indexOf(current);
  const from = at === -1 ? 0 : at;
  const next = Math.min(kept.length - 1, Math.max(0, from + delta));
  return kept[next];
}
