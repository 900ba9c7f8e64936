import { useEffect, useMemo, useState } from 'react';
import { Alert, Button, Slider, Space, Switch, Typography } from 'antd';
import { imageUrl, type Slice } from '../api/client';
import { useApi } from '../api/context';
import { stepKept } from '../lib/slicePlot';
import { LESION_LEGEND } from '../lib/findings';

export function useImage(apiKey: string, path: string | null): { url: string | null; error: boolean } {
  const [state, setState] = useState<{ url: string | null; error: boolean }>({ url: null, error: false });
  useEffect(() => {
    if (!path) {
      setState({ url: null, error: false });
      return;
    }
    let url: string | null = null;
    let live = true;
    imageUrl(apiKey, path)
      .then((u) => {
        url = u;
        if (live) setState({ url: u, error: false });
        else URL.revokeObjectURL(u);
      })
      .catch(() => live && setState({ url: null, error: true }));
    return () => {
      live = false;
      if (url) URL.revokeObjectURL(url);
    };
  }, [apiKey, path]);
  return state;
}

export function SliceViewer({ jobId, slices }: { jobId: string; slices: Slice[] }) {
  const { apiKey } = useApi();
  const kept = useMemo(() => slices.filter((s) => s.kept).map((s) => s.index).sort((a, b) => a - b), [slices]);
  const withHeatmap = useMemo(() => slices.filter((s) => s.heatmap_url).map((s) => s.index), [slices]);
  const [current, setCurrent] = useState<number>(() => withHeatmap[0] ?? kept[0] ?? 0);
  const [opacity, setOpacity] = useState(70);
  const slice = slices.find((s) => s.index === current);
  const image = useImage(apiKey, kept.length ? `/v1/jobs/${jobId}/slices/${current}.png` : null);
  const heatmap = useImage(apiKey, slice?.heatmap_url ?? null);
  // Lesion overlay (HU series): ground glass and consolidation from the lesion masks.
  const hasLesions = useMemo(() => slices.some((s) => s.lesions_url), [slices]);
  const [showLesions, setShowLesions] = useState(true);
  const lesions = useImage(apiKey, showLesions ? (slice?.lesions_url ?? null) : null);

  if (kept.length === 0) return <Alert type="info" title="No slice was kept, so there is nothing to show." />;
  const step = (delta: number) => setCurrent((c) => stepKept(kept, c, delta));
  const position = kept.indexOf(current);

  return (
    <Space direction="vertical" style={{ width: '100%' }}>
      <Typography.Paragraph>
        Step through the kept slices with the arrow keys or the mouse wheel over the image. The Grad-CAM heatmap is the
        slice CNN&apos;s (where that network looked), not the evidence of the verdict, which comes from the CT pattern; it
        is overlaid on the {withHeatmap.length} slices with the highest slice-CNN P(COVID)
        {withHeatmap.length > 0 && ` (slices ${withHeatmap.join(', ')})`}.
      </Typography.Paragraph>
      <div
        role="group"
        tabIndex={0}
        aria-label={`Slice viewer: slice ${current}, ${position + 1} of ${kept.length} kept. Use arrow keys to step.`}
        data-testid="slice-viewer"
        data-slice={current}
        onKeyDown={(e) => {
          if (e.key === 'ArrowRight' || e.key === 'ArrowDown') {
            step(1);
            e.preventDefault();
          } else if (e.key === 'ArrowLeft' || e.key === 'ArrowUp') {
            step(-1);
            e.preventDefault();
          } else if (e.key === 'Home') setCurrent(kept[0]);
          else if (e.key === 'End') setCurrent(kept[kept.length - 1]);
        }}
        onWheel={(e) => step(e.deltaY > 0 ? 1 : -1)}
        style={{ position: 'relative', width: 'min(100%, 512px)', aspectRatio: '1 / 1', background: '#000', outlineOffset: 2 }}
      >
        {image.url && (
          <img src={image.url} alt={`Slice ${current} as the model saw it`} style={{ width: '100%', height: '100%', imageRendering: 'pixelated' }} />
        )}
        {heatmap.url && (
          <img
            data-testid="heatmap"
            src={heatmap.url}
            alt={`Grad-CAM heatmap of the slice CNN on slice ${current}`}
            style={{ position: 'absolute', inset: 0, width: '100%', height: '100%', opacity: opacity / 100 }}
          />
        )}
        {lesions.url && (
          <img
            data-testid="lesion-overlay"
            src={lesions.url}
            alt={`Lesions of slice ${current}: ground glass and consolidation`}
            style={{ position: 'absolute', inset: 0, width: '100%', height: '100%', imageRendering: 'pixelated' }}
          />
        )}
      </div>
      {hasLesions && (
        <Space wrap data-testid="lesion-legend">
          <Switch checked={showLesions} onChange={setShowLesions} aria-label="Show lesions" />
          <span>Lesions</span>
          {LESION_LEGEND.map(([name, colour]) => (
            <span key={name}>
              <span aria-hidden style={{ display: 'inline-block', width: 12, height: 12, background: colour, marginRight: 4 }} />
              {name}
            </span>
          ))}
          {slice?.lesion_share != null && <span>{(slice.lesion_share * 100).toFixed(1)} % of this slice&apos;s lung</span>}
        </Space>
      )}
      <Space wrap>
        <Button onClick={() => step(-1)} disabled={position <= 0}>
          Previous slice
        </Button>
        <Button onClick={() => step(1)} disabled={position >= kept.length - 1}>
          Next slice
        </Button>
        <span>
          Slice {current} ({position + 1} of {kept.length} kept)
          {slice?.probabilities && `, P(COVID) ${slice.probabilities.COVID.toFixed(3)}`}
          {slice?.heatmap_url ? ', heatmap shown' : ', no heatmap for this slice'}
        </span>
        {withHeatmap.length > 0 && (
          <Button onClick={() => setCurrent(withHeatmap[(withHeatmap.indexOf(current) + 1) % withHeatmap.length])}>
            Next heatmap
          </Button>
        )}
      </Space>
      <Space style={{ width: 'min(100%, 512px)' }}>
        <span id="opacity-label">Slice-CNN Grad-CAM opacity</span>
        <Slider
          style={{ width: 240 }}
          min={0}
          max={100}
          value={opacity}
          onChange={setOpacity}
          ariaLabelledByForHandle="opacity-label"
          disabled={!heatmap.url}
        />
      </Space>
    </Space>
  );
}
