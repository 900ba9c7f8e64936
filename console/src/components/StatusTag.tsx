import { Tag } from 'antd';

// Text and background pairs of at least 4.5:1 contrast (WCAG AA), not antd's presets.
const RUNNING = { color: '#0b4a8b', background: '#e6f0fb', borderColor: '#9dbfe6' };
const COLORS: Record<string, { color: string; background: string; borderColor: string }> = {
  awaiting_upload: { color: '#3d3d3d', background: '#f2f2f2', borderColor: '#c8c8c8' },
  queued: RUNNING,
  preprocessing: RUNNING,
  scoring: RUNNING,
  ensembling: RUNNING,
  succeeded: { color: '#1d5c0a', background: '#eef8e6', borderColor: '#a4d08a' },
  failed: { color: '#9b1c17', background: '#fdecea', borderColor: '#eba7a3' },
  cancelled: { color: '#7a3f00', background: '#fff4e0', borderColor: '#e6c48f' },
};

export const STATUS_LABELS: Record<string, string> = {
  awaiting_upload: 'awaiting upload',
  queued: 'queued',
  preprocessing: 'preprocessing',
  scoring: 'scoring',
  ensembling: 'ensembling',
  succeeded: 'succeeded',
  failed: 'failed',
  cancelled: 'cancelled',
};

export function StatusTag({ status }: { status: string }) {
  return (
    <Tag style={COLORS[status] ?? COLORS.awaiting_upload} data-status={status}>
      {STATUS_LABELS[status] ?? status}
    </Tag>
  );
}
