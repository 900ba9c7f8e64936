import { Tag } from 'antd';

const COLORS: Record<string, string> = {
  awaiting_upload: 'default',
  queued: 'blue',
  preprocessing: 'processing',
  scoring: 'processing',
  ensembling: 'processing',
  succeeded: 'success',
  failed: 'error',
  cancelled: 'warning',
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
    <Tag color={COLORS[status] ?? 'default'} data-status={status}>
      {STATUS_LABELS[status] ?? status}
    </Tag>
  );
}
