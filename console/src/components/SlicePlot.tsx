import { useEffect, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { alignedSeries, REASON_LABELS, type PlotData } from '../lib/slicePlot';

const REASON_COLORS = ['#b00020', '#7a4b00', '#5a2d82', '#333333'];

export function SlicePlot({ data }: { data: PlotData }) {
  const target = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const el = target.current;
    if (!el) return;
    const aligned = alignedSeries(data);
    const plot = new uPlot(
      {
        width: Math.max(320, el.clientWidth || 800),
        height: 240,
        scales: { x: { time: false }, y: { range: [0, 1] } },
        legend: { live: false },
        axes: [{ label: 'slice index' }, { label: 'P(COVID)' }],
        series: [
          { label: 'slice' },
          { label: 'P(COVID), kept slice', stroke: '#0b5cad', width: 2, points: { show: true, size: 4 }, spanGaps: true },
          ...data.reasons.map((r, i) => ({
            label: `dropped: ${REASON_LABELS[r] ?? r}`,
            stroke: REASON_COLORS[i % REASON_COLORS.length],
            width: 0,
            points: { show: true, size: 7 },
          })),
        ],
      },
      [aligned.x, ...aligned.series] as uPlot.AlignedData,
      el,
    );
    return () => plot.destroy();
  }, [data]);
  return (
    <figure style={{ margin: 0 }}>
      <div ref={target} data-testid="slice-plot" data-points={data.x.length} data-dropped={data.dropped.length} />
      <figcaption>
        {data.x.length} kept slices plotted
        {data.dropped.length > 0 &&
          `; ${data.dropped.length} dropped (${data.reasons.map((r) => `${REASON_LABELS[r] ?? r}: ${data.dropped.filter((d) => d.reason === r).length}`).join(', ')}), marked at 0`}
        .
      </figcaption>
    </figure>
  );
}
