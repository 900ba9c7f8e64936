import { Alert, Typography } from 'antd';
import { two, verdictHeadline } from '../lib/verdict';

const TONE = { covid: 'error', other_pneumonia: 'warning', no_pneumonia: 'success', indeterminate: 'info' } as const;

/** The first thing a reader sees of a result: the category, then P(COVID) and its origin. */
export function VerdictHeadline({
  result,
}: {
  result: { label: string; probabilities: Record<string, number>; findings?: Record<string, unknown> | null };
}) {
  const h = verdictHeadline(result);
  return (
    <Alert
      data-testid="verdict-headline"
      data-category={h.category ?? 'none'}
      type={h.category ? TONE[h.category] : 'info'}
      showIcon
      title={
        <Typography.Title level={2} style={{ fontSize: 20, margin: 0 }}>
          {h.title}
        </Typography.Title>
      }
      description={
        <>
          <div style={{ fontSize: 16 }}>
            P(COVID) <strong data-testid="headline-p-covid">{two(h.pCovid)}</strong>
          </div>
          <div data-testid="headline-explanation">{h.explanation}</div>
        </>
      }
    />
  );
}
