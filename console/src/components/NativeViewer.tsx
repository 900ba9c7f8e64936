// The slice as read, at its native resolution (issue 20.4): lung and mediastinal window
// presets, window/level by dragging, zoom and pan, orientation markers, and overlays on top,
// all served at the slice's own geometry so they register with it: the lung mask, the lesion
// masks of the verdict (ground glass and consolidation), the lung pixels in the HU ranges the
// CT pattern counted, and, optional and off by default, the slice CNN's Grad-CAM (mapped back
// from the model's crop by the server). Every slice of the study (kept or dropped), numbered
// by InstanceNumber and SliceLocation as well.
import { useEffect, useMemo, useRef, useState } from 'react';
import { Alert, Button, Radio, Space, Switch, Typography } from 'antd';
import type { Slice } from '../api/client';
import { useApi } from '../api/context';
import { useImage } from './SliceViewer';
import { dragWindow, orientationMarkers, PRESETS, windowParam, zoomAbout, type View, type Window } from '../lib/windowing';

type DragMode = 'window' | 'pan';

export function NativeViewer({
  slices,
  orientation,
  pixelSpacing,
  isHu,
}: {
  slices: Slice[];
  orientation?: Record<string, string> | null;
  pixelSpacing?: number[] | null;
  isHu: boolean;
}) {
  const { apiKey } = useApi();
  const shown = useMemo(() => slices.filter((s) => s.image_url).sort((a, b) => a.index - b.index), [slices]);
  const [position, setPosition] = useState(() => Math.floor(shown.length / 2));
  const [win, setWin] = useState<Window>(PRESETS.lung);
  const [requested, setRequested] = useState<Window>(PRESETS.lung); // debounced: one render per pause
  const [view, setView] = useState<View>({ zoom: 1, x: 0, y: 0 });
  const [mode, setMode] = useState<DragMode>('window');
  const hasLesions = useMemo(() => shown.some((s) => s.lesion_overlay_url), [shown]);
  const hasGradcam = useMemo(() => shown.some((s) => s.gradcam_url), [shown]);
  const [showMask, setShowMask] = useState(false);
  const [showLesions, setShowLesions] = useState(true);
  // The HU ranges are what the pattern counted; once lesion masks exist they are the
  // evidence to show first, the ranges stay one switch away.
  const [showDensity, setShowDensity] = useState(!hasLesions);
  const [showGradcam, setShowGradcam] = useState(false);
  const drag = useRef<{ x: number; y: number; win: Window; view: View } | null>(null);
  const box = useRef<HTMLDivElement>(null);

  useEffect(() => {
    const t = setTimeout(() => setRequested(win), 200);
    return () => clearTimeout(t);
  }, [win]);

  const slice = shown[Math.min(position, shown.length - 1)];
  const query = isHu ? `?window=${encodeURIComponent(windowParam(requested))}` : '';
  const image = useImage(apiKey, slice?.image_url ? `${slice.image_url}${query}` : null);
  const mask = useImage(apiKey, showMask ? (slice?.lung_mask_url ?? null) : null);
  const density = useImage(apiKey, showDensity ? (slice?.density_overlay_url ?? null) : null);
  const lesions = useImage(apiKey, showLesions ? (slice?.lesion_overlay_url ?? null) : null);
  const gradcam = useImage(apiKey, showGradcam ? (slice?.gradcam_url ?? null) : null);
  const markers = orientationMarkers(orientation);

  if (!slice) return <Alert type="info" title="The study's slices were not kept at native resolution." />;
  const step = (delta: number) => setPosition((p) => Math.min(shown.length - 1, Math.max(0, p + delta)));
  const layer = { position: 'absolute' as const, inset: 0, width: '100%', height: '100%', objectFit: 'contain' as const };
  const where = [
    `slice ${slice.index}`,
    slice.instance_number != null && `instance ${slice.instance_number}`,
    slice.slice_location != null && `location ${slice.slice_location.toFixed(1)} mm`,
  ]
    .filter(Boolean)
    .join(', ');

  return (
    <Space direction="vertical" style={{ width: '100%' }}>
      <Typography.Paragraph>
        The slice as the scanner wrote it, every slice of the study. Drag on the image to change the window (right: wider,
        down: higher level) or, in pan mode, to move it; Ctrl + wheel or the buttons zoom, the wheel and arrow keys step
        through the slices.
      </Typography.Paragraph>
      <Space wrap>
        {isHu && (
          <Radio.Group
            aria-label="Window preset"
            value={windowParam(win) in PRESETS ? windowParam(win) : 'custom'}
            onChange={(e) => e.target.value in PRESETS && setWin(PRESETS[e.target.value as keyof typeof PRESETS])}
            options={[
              { value: 'lung', label: 'Lung window' },
              { value: 'mediastinal', label: 'Mediastinal window' },
              { value: 'custom', label: 'Custom', disabled: true },
            ]}
            optionType="button"
          />
        )}
        <Radio.Group
          aria-label="Drag mode"
          value={mode}
          onChange={(e) => setMode(e.target.value)}
          options={[
            ...(isHu ? [{ value: 'window', label: 'Drag: window/level' }] : []),
            { value: 'pan', label: 'Drag: pan' },
          ]}
          optionType="button"
        />
        <Button onClick={() => setView((v) => zoomAbout(v, 1.5))}>Zoom in</Button>
        <Button onClick={() => setView((v) => zoomAbout(v, 1 / 1.5))}>Zoom out</Button>
        <Button onClick={() => setView({ zoom: 1, x: 0, y: 0 })}>Fit</Button>
      </Space>
      <div
        ref={box}
        role="group"
        tabIndex={0}
        aria-label={`Native slice viewer: ${where}, ${position + 1} of ${shown.length}. Use arrow keys to step.`}
        data-testid="native-viewer"
        data-slice={slice.index}
        data-window={windowParam(requested)}
        data-zoom={view.zoom}
        onKeyDown={(e) => {
          if (e.key === 'ArrowRight' || e.key === 'ArrowDown') step(1);
          else if (e.key === 'ArrowLeft' || e.key === 'ArrowUp') step(-1);
          else return;
          e.preventDefault();
        }}
        onWheel={(e) => {
          if (e.ctrlKey) {
            const r = box.current!.getBoundingClientRect();
            setView((v) => zoomAbout(v, e.deltaY < 0 ? 1.25 : 0.8, e.clientX - r.left - r.width / 2, e.clientY - r.top - r.height / 2));
          } else step(e.deltaY > 0 ? 1 : -1);
        }}
        onPointerDown={(e) => {
          drag.current = { x: e.clientX, y: e.clientY, win, view };
          (e.target as Element).setPointerCapture?.(e.pointerId);
        }}
        onPointerMove={(e) => {
          const d = drag.current;
          if (!d) return;
          const dx = e.clientX - d.x;
          const dy = e.clientY - d.y;
          if (mode === 'window' && isHu) setWin(dragWindow(d.win, dx, dy));
          else setView({ ...d.view, x: d.view.x + dx, y: d.view.y + dy });
        }}
        onPointerUp={() => (drag.current = null)}
        style={{
          position: 'relative',
          width: 'min(100%, 640px)',
          aspectRatio: slice.rows && slice.columns ? `${slice.columns} / ${slice.rows}` : '1 / 1',
          background: '#000',
          overflow: 'hidden',
          cursor: mode === 'pan' ? 'grab' : 'crosshair',
          touchAction: 'none',
          userSelect: 'none',
        }}
      >
        <div style={{ ...layer, transform: `translate(${view.x}px, ${view.y}px) scale(${view.zoom})` }}>
          {image.url && <img src={image.url} alt={`Slice ${slice.index} at native resolution`} draggable={false} style={layer} />}
          {mask.url && <img data-testid="lung-mask-overlay" src={mask.url} alt="Lung mask" draggable={false} style={layer} />}
          {density.url && (
            <img data-testid="density-overlay" src={density.url} alt="Lung pixels in the ground-glass and consolidation HU ranges" draggable={false} style={layer} />
          )}
          {lesions.url && (
            <img data-testid="native-lesion-overlay" src={lesions.url} alt="Lesion masks of the verdict: ground glass and consolidation" draggable={false} style={layer} />
          )}
          {gradcam.url && (
            <img data-testid="gradcam-overlay" src={gradcam.url} alt="Grad-CAM heatmap of the slice CNN (not the verdict)" draggable={false} style={layer} />
          )}
        </div>
        {markers &&
          (['left', 'right', 'top', 'bottom'] as const).map((edge) => (
            <span
              key={edge}
              data-testid={`orientation-${edge}`}
              style={{
                position: 'absolute',
                color: '#fff',
                fontWeight: 700,
                textShadow: '0 0 3px #000',
                ...(edge === 'left' && { left: 6, top: '50%' }),
                ...(edge === 'right' && { right: 6, top: '50%' }),
                ...(edge === 'top' && { top: 4, left: '50%' }),
                ...(edge === 'bottom' && { bottom: 4, left: '50%' }),
              }}
            >
              {markers[edge]}
            </span>
          ))}
        <span style={{ position: 'absolute', left: 6, bottom: 4, color: '#fff', fontSize: 12, textShadow: '0 0 3px #000' }}>
          {isHu ? `W ${win.width} L ${win.level}` : 'as sent'}
          {pixelSpacing && ` · ${pixelSpacing[1].toFixed(2)} mm/px`}
        </span>
      </div>
      <Space wrap>
        <Button onClick={() => step(-1)} disabled={position <= 0}>
          Previous
        </Button>
        <Button onClick={() => step(1)} disabled={position >= shown.length - 1}>
          Next
        </Button>
        <span data-testid="native-position">
          {where} ({position + 1} of {shown.length}){!slice.kept && ` · not used by the model: ${slice.drop_reason ?? 'dropped'}`}
        </span>
      </Space>
      <Space wrap>
        <Switch checked={showMask} onChange={setShowMask} aria-label="Show the lung mask" disabled={!slice.lung_mask_url} />
        <span>Lung mask (cyan)</span>
        {hasLesions && (
          <>
            <Switch checked={showLesions} onChange={setShowLesions} aria-label="Show the lesion masks" disabled={!slice.lesion_overlay_url} />
            <span>Lesion masks of the verdict: ground glass (amber), consolidation (red)</span>
          </>
        )}
        {isHu && (
          <>
            <Switch checked={showDensity} onChange={setShowDensity} aria-label="Show the counted HU ranges" />
            <span>
              HU ranges the pattern counted: ground glass −700 to −300 HU (amber), consolidation −300 to 100 HU (red)
            </span>
          </>
        )}
      </Space>
      {hasGradcam && (
        <Space wrap>
          <Switch
            checked={showGradcam}
            onChange={setShowGradcam}
            aria-label="Show the slice CNN's Grad-CAM"
            disabled={!slice.gradcam_url}
            data-testid="gradcam-switch"
          />
          <span>
            Grad-CAM of the slice CNN: what drove that one network's score on this slice, not the verdict (which comes from
            the CT pattern). Only the most suspicious slices have one{slice.gradcam_url ? '' : '; this slice has none'}.
          </span>
        </Space>
      )}
    </Space>
  );
}
