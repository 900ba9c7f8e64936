import { useMemo } from 'react';
import { Alert, App as AntApp, Button, Card, Descriptions, Popconfirm, Space, Spin, Steps, Typography } from 'antd';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { imageUrl, ok, type JobEvents } from '../api/client';
import { useApi } from '../api/context';
import { allows } from '../lib/session';
import { BackOff } from '../lib/polling';
import { ApiFailure, errorText } from '../lib/errors';
import { plotData } from '../lib/slicePlot';
import { lesionSummary, patternSummary } from '../lib/findings';
import { StatusTag } from './StatusTag';
import { formatTime } from './JobsPage';
import { SlicePlot } from './SlicePlot';
import { SliceViewer } from './SliceViewer';
import { VerdictHeadline } from './VerdictHeadline';
import { NativeViewer } from './NativeViewer';
import { SeriesCard } from './SeriesCard';
import { two } from '../lib/verdict';

const STEPS = ['queued', 'preprocessing', 'scoring', 'ensembling', 'succeeded'] as const;

function timeline(status: string, events: JobEvents['events']) {
  const at = new Map<string, string>();
  for (const e of events) if (!at.has(e.status)) at.set(e.status, e.at);
  const reached = STEPS.map((s) => at.has(s) || s === status);
  let current = reached.lastIndexOf(true);
  if (current < 0) current = 0;
  const failed = status === 'failed' || status === 'cancelled';
  return {
    current,
    status: failed ? ('error' as const) : status === 'succeeded' ? ('finish' as const) : ('process' as const),
    items: STEPS.map((s, i) => ({
      title: i === current && failed ? `${s} (${status})` : s,
      description: at.get(s) ? formatTime(at.get(s)!) : undefined,
    })),
  };
}

export function JobPage({ jobId }: { jobId: string }) {
  const { client, apiKey, auth } = useApi();
  const mayDelete = allows(auth, 'uploader'); // what the server allows (a viewer only reads)
  const { message } = AntApp.useApp();
  const queryClient = useQueryClient();
  const backOff = useMemo(() => new BackOff(), []);

  const job = useQuery({
    queryKey: ['job', jobId],
    queryFn: () => ok(client.GET('/v1/jobs/{job_id}', { params: { path: { job_id: jobId } } })),
    refetchInterval: (q) => (q.state.data ? backOff.interval([q.state.data]) : false),
  });
  const status = job.data?.status;
  const events = useQuery({
    queryKey: ['events', jobId, status, job.data?.stage],
    queryFn: () => ok(client.GET('/v1/jobs/{job_id}/events', { params: { path: { job_id: jobId } } })),
    enabled: !!status,
  });
  const slices = useQuery({
    queryKey: ['slices', jobId],
    queryFn: () => ok(client.GET('/v1/jobs/{job_id}/slices', { params: { path: { job_id: jobId } } })),
    enabled: status === 'succeeded',
  });
  const remove = useMutation({
    mutationFn: () => ok(client.DELETE('/v1/jobs/{job_id}', { params: { path: { job_id: jobId } } }).then((r) => ({ ...r, data: r.data ?? {} }))),
    onSuccess: () => {
      message.success('Job deleted');
      void queryClient.invalidateQueries({ queryKey: ['jobs'] });
      window.location.hash = '/';
    },
    onError: (e) => message.error(e instanceof ApiFailure ? e.text : String(e)),
  });

  if (job.isLoading) return <Spin aria-label="Loading job" />;
  if (job.error || !job.data) {
    const e = job.error as ApiFailure | null;
    return <Alert type="error" showIcon title={e?.text ?? 'Job not found'} action={<a href="#/">Back to jobs</a>} />;
  }
  const j = job.data;
  const tl = timeline(j.status, events.data?.events ?? []);
  const plot = slices.data ? plotData(slices.data.slices) : null;
  const pattern = patternSummary(j.result?.findings);
  const lesions = lesionSummary(j.result?.findings);
  const ml = (v: number | null) => (v === null ? '–' : `${v.toFixed(0)} mL`);
  const title = j.external_id || j.id;

  return (
    <Space direction="vertical" size="large" style={{ width: '100%' }}>
      <Space style={{ justifyContent: 'space-between', width: '100%' }} wrap>
        <Space align="center">
          <a href="#/">← Jobs</a>
          <Typography.Title level={1} style={{ fontSize: 22, margin: 0 }}>
            {title}
          </Typography.Title>
          <StatusTag status={j.status} />
        </Space>
        <Space>
        {j.status === 'succeeded' && (
          <Button
            data-testid="report-pdf"
            onClick={async () => {
              try {
                const url = await imageUrl(apiKey, `/v1/jobs/${jobId}/report.pdf`);
                const a = document.createElement('a');
                a.href = url;
                a.download = `covidct-report-${jobId}.pdf`;
                a.click();
                setTimeout(() => URL.revokeObjectURL(url), 60_000);
              } catch (e) {
                message.error(e instanceof ApiFailure ? e.text : String(e));
              }
            }}
          >
            PDF report
          </Button>
        )}
        {mayDelete && (
          <Popconfirm
            title="Delete this job?"
            description="Its study, slices and verdict are removed for good."
            okText="Delete"
            okButtonProps={{ danger: true }}
            cancelText="Keep"
            onConfirm={() => remove.mutate()}
          >
            <Button danger loading={remove.isPending}>
              Delete job
            </Button>
          </Popconfirm>
        )}
        </Space>
      </Space>

      <Card title={<Typography.Title level={2} style={{ fontSize: 18, margin: 0 }}>Progress</Typography.Title>}>
        <Steps current={tl.current} status={tl.status} items={tl.items} size="small" data-testid="timeline" />
      </Card>

      {j.error && (
        <Alert
          type="error"
          showIcon
          role="alert"
          data-testid="job-error"
          title={errorText(j.error.code, j.error.message)}
          description={`${j.error.code}: ${j.error.message}`}
        />
      )}

      {j.result && (
        <Card title={<Typography.Title level={2} style={{ fontSize: 18, margin: 0 }}>Verdict</Typography.Title>}>
          <VerdictHeadline result={j.result} />
          <Descriptions column={{ xs: 1, md: 3 }} bordered size="small" style={{ marginTop: 12 }}>
            <Descriptions.Item label="Binary label (COVID-19 or not)">
              <strong data-testid="verdict">{j.result.label}</strong>
            </Descriptions.Item>
            {Object.entries(j.result.probabilities).map(([name, p]) => (
              <Descriptions.Item key={name} label={`P(${name})`}>
                <span data-testid={`p-${name}`} data-value={p}>
                  {two(p)}
                </span>
              </Descriptions.Item>
            ))}
            <Descriptions.Item label="Slices used">
              {j.result.slices_used} of {j.result.slices_total}
            </Descriptions.Item>
            {pattern && (
              <Descriptions.Item label="CT pattern (RSNA)" span={3}>
                <strong data-testid="ct-pattern">{pattern.pattern}</strong>
                {pattern.groundGlassPercent !== null &&
                  ` (ground glass ${pattern.groundGlassPercent.toFixed(1)} % of the lungs)`}
                <ul style={{ margin: '4px 0 0', paddingLeft: 20 }}>
                  {pattern.reasons.map((r) => (
                    <li key={r}>{r}</li>
                  ))}
                </ul>
              </Descriptions.Item>
            )}
            {lesions && (
              <>
                <Descriptions.Item label="Opacity">
                  <span data-testid="opacity">{lesions.opacityPercent.toFixed(1)} %</span> of the lungs
                </Descriptions.Item>
                <Descriptions.Item label="High opacity (≥ −200 HU)">
                  {lesions.highOpacityPercent === null ? '–' : `${lesions.highOpacityPercent.toFixed(1)} %`}
                </Descriptions.Item>
                <Descriptions.Item label="Severity score">
                  <span data-testid="severity">{lesions.severityScore ?? '–'}</span> / 24
                </Descriptions.Item>
                <Descriptions.Item label="Volumes" span={3}>
                  lesions {ml(lesions.lesionMl)} (ground glass {ml(lesions.ggoMl)}, consolidation{' '}
                  {ml(lesions.consolidationMl)}) of {ml(lesions.lungMl)} lung
                </Descriptions.Item>
                <Descriptions.Item label="Opacity per zone (score 0–4)" span={3}>
                  <span data-testid="zones">
                    {lesions.zones
                      .map((z) => `${z.name} ${z.opacityPercent.toFixed(1)} %${z.severity === null ? '' : ` (${z.severity})`}`)
                      .join(' · ')}
                  </span>
                </Descriptions.Item>
              </>
            )}
            {Object.entries(j.result.model_versions).map(([name, v]) => (
              <Descriptions.Item key={name} label={`Model ${name}`}>
                {v}
              </Descriptions.Item>
            ))}
          </Descriptions>
          <Typography.Paragraph style={{ marginTop: 12, marginBottom: 0 }}>
            A research result, not a diagnosis: the{' '}
            <a href="#/model-card">model card</a>{' '}
            lists what the models were trained on and where they are known to be wrong.
          </Typography.Paragraph>
        </Card>
      )}

      {j.result?.series && (
        <Card title={<Typography.Title level={2} style={{ fontSize: 18, margin: 0 }}>Study and series read</Typography.Title>}>
          <SeriesCard series={j.result.series} />
        </Card>
      )}

      {plot && slices.data && (
        <>
          <Card title={<Typography.Title level={2} style={{ fontSize: 18, margin: 0 }}>P(COVID) per slice</Typography.Title>}>
            <SlicePlot data={plot} />
          </Card>
          <Card title={<Typography.Title level={2} style={{ fontSize: 18, margin: 0 }}>Slices at native resolution</Typography.Title>}>
            <NativeViewer
              slices={slices.data.slices}
              orientation={slices.data.orientation}
              pixelSpacing={slices.data.pixel_spacing_mm}
              isHu={slices.data.native === 'hu'}
            />
          </Card>
          <Card title={<Typography.Title level={2} style={{ fontSize: 18, margin: 0 }}>Slices as the model saw them</Typography.Title>}>
            <SliceViewer jobId={jobId} slices={slices.data.slices} />
          </Card>
        </>
      )}
    </Space>
  );
}
