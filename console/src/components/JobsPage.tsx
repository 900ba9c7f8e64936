import { useMemo, useState } from 'react';
import { Alert, Card, Select, Space, Table, Typography } from 'antd';
import { useQuery } from '@tanstack/react-query';
import { ok, type Job, type JobStatus } from '../api/client';
import { useApi } from '../api/context';
import { BackOff } from '../lib/polling';
import { ApiFailure, errorText } from '../lib/errors';
import { StatusTag, STATUS_LABELS } from './StatusTag';
import { Uploader } from './Uploader';
import { two, verdictHeadline } from '../lib/verdict';

const PAGE_SIZE = 20;

export function formatTime(iso: string): string {
  const d = new Date(iso.endsWith('Z') || /[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

export function JobsPage() {
  const { client, onUnauthorized } = useApi();
  const [status, setStatus] = useState<JobStatus | undefined>(undefined);
  const [page, setPage] = useState(1);
  const backOff = useMemo(() => new BackOff(), []);

  const jobs = useQuery({
    queryKey: ['jobs', status, page],
    queryFn: async () => {
      try {
        return await ok(
          client.GET('/v1/jobs', { params: { query: { status: status ? [status] : undefined, limit: PAGE_SIZE, offset: (page - 1) * PAGE_SIZE } } }),
        );
      } catch (e) {
        if (e instanceof ApiFailure && e.status === 401) onUnauthorized();
        throw e;
      }
    },
    refetchInterval: (query) => backOff.interval(query.state.data?.items ?? []),
  });

  const columns = [
    {
      title: 'Study (external id)',
      key: 'study',
      render: (_: unknown, job: Job) => <a href={`#/jobs/${job.id}`}>{job.external_id || job.id}</a>,
    },
    { title: 'Status', dataIndex: 'status', key: 'status', render: (s: string) => <StatusTag status={s} /> },
    { title: 'Stage', dataIndex: 'stage', key: 'stage', render: (s: string | null) => s ?? '' },
    { title: 'Created', dataIndex: 'created_at', key: 'created', render: (t: string) => formatTime(t) },
    {
      title: 'Verdict',
      key: 'verdict',
      render: (_: unknown, job: Job) =>
        job.result ? (
          <strong>{verdictHeadline(job.result).title}</strong>
        ) : job.error ? (
          <span title={job.error.message}>{errorText(job.error.code, job.error.message)}</span>
        ) : (
          ''
        ),
    },
    {
      title: 'P(COVID)',
      key: 'p',
      align: 'right' as const,
      render: (_: unknown, job: Job) => (job.result ? two(job.result.probabilities.COVID ?? 0) : ''),
    },
  ];

  return (
    <Space direction="vertical" size="large" style={{ width: '100%' }}>
      <Card title={<Typography.Title level={2} style={{ fontSize: 18, margin: 0 }}>Upload a study</Typography.Title>}>
        <Uploader />
      </Card>
      <Card
        title={<Typography.Title level={2} style={{ fontSize: 18, margin: 0 }}>Jobs</Typography.Title>}
        extra={
          <Space>
            <label htmlFor="status-filter">Status</label>
            <Select
              id="status-filter"
              aria-label="Filter by status"
              allowClear
              placeholder="all"
              style={{ width: 180 }}
              value={status}
              onChange={(v) => {
                setStatus(v);
                setPage(1);
              }}
              options={Object.entries(STATUS_LABELS).map(([value, label]) => ({ value, label }))}
            />
          </Space>
        }
      >
        {jobs.error && <Alert type="error" showIcon title={(jobs.error as ApiFailure).text ?? String(jobs.error)} />}
        <Table<Job>
          data-testid="jobs-table"
          rowKey="id"
          size="middle"
          loading={jobs.isLoading}
          columns={columns}
          dataSource={jobs.data?.items ?? []}
          locale={{ emptyText: <Typography.Text>No jobs yet. Upload a study above to start one.</Typography.Text> }}
          pagination={{
            current: page,
            pageSize: PAGE_SIZE,
            total: jobs.data?.total ?? 0,
            showSizeChanger: false,
            onChange: setPage,
            hideOnSinglePage: true,
          }}
        />
      </Card>
    </Space>
  );
}
