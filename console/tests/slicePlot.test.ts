import { describe, expect, it } from 'vitest';
import { alignedSeries, plotData, stepKept, type SliceLike } from '../src/lib/slicePlot';

const slice = (index: number, kept: boolean, p: number | null, reason: string | null = null, heatmap = false): SliceLike => ({
  index,
  kept,
  drop_reason: reason,
  probabilities: p === null ? null : { NonCOVID: 1 - p, COVID: p },
  heatmap_url: heatmap ? `/v1/jobs/j/heatmaps/${index}` : null,
});

describe('slice plot data', () => {
  const slices = [
    slice(3, true, 0.9, null, true),
    slice(0, false, null, 'no_lung'),
    slice(1, true, 0.2),
    slice(2, false, null, 'near_duplicate'),
    slice(4, false, null, 'no_lung'),
  ];

  it('has one point per kept slice, in slice order', () => {
    const data = plotData(slices);
    expect(data.x).toEqual([1, 3]);
    expect(data.y).toEqual([0.2, 0.9]);
  });

  it('marks every dropped slice with its reason', () => {
    const data = plotData(slices);
    expect(data.dropped).toEqual([
      { index: 0, reason: 'no_lung' },
      { index: 2, reason: 'near_duplicate' },
      { index: 4, reason: 'no_lung' },
    ]);
    expect(data.reasons).toEqual(['near_duplicate', 'no_lung']);
    expect(data.heatmaps).toEqual([3]);
  });

  it('aligns scores and drop markers on one x axis for uPlot', () => {
    const { x, series } = alignedSeries(plotData(slices));
    expect(x).toEqual([0, 1, 2, 3, 4]);
    expect(series[0]).toEqual([null, 0.2, null, 0.9, null]);
    expect(series[1]).toEqual([null, null, 0, null, null]); // near_duplicate
    expect(series[2]).toEqual([0, null, null, null, 0]); // no_lung
  });

  it('steps through kept slices only, clamped at both ends', () => {
    const kept = [1, 3, 7];
    expect(stepKept(kept, 1, 1)).toBe(3);
    expect(stepKept(kept, 3, 1)).toBe(7);
    expect(stepKept(kept, 7, 1)).toBe(7);
    expect(stepKept(kept, 1, -1)).toBe(1);
    expect(stepKept([], 5, 1)).toBe(5);
  });
});
