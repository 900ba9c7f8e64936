import { useEffect, useMemo, useState } from 'react';
import { Alert, Card, Input, Select, Space, Table, Typography } from 'antd';
import type { SorterResult } from 'antd/es/table/interface';
import { useQuery } from '@tanstack/react-query';
import { ok, type Job, type JobStatus } from '../api/client';
import { useApi } from '../api/context';
import { BackOff } from '../lib/polling';
import { ApiFailure, errorText } from '../lib/errors';
import { StatusTag, STATUS_LABELS } from './StatusTag';
import { Uploader } from './Uploader';
import { two, verdictHeadline } from '../lib/verdict';
import { CATEGORY_OPTIONS, dateRange, DEFAULT_SORT, sortKey, sortOrder, studyDate, type SortField, type SortKey } from '../lib/worklist';
import { allows } from '../lib/session';

const PAGE_SIZE = 20;

export function formatTime(iso: string): string {
  const d = new Date(iso.endsWith('Z') || /[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

export function JobsPage() {
  const { client, auth, onUnauthorized } = useApi();
  const mayUpload = allows(auth, 'uploader'); // the server refuses a viewer's upload anyway
  const [status, setStatus] = useState<JobStatus | undefined>(undefined);
  const [category, setCategory] = useState<(typeof CATEGORY_OPTIONS)[number]['value'] | undefined>(undefined);
  const [search, setSearch] = useState('');
  const [q, setQ] = useState('');
  const [sort, setSort] = useState<SortKey>(DEFAULT_SORT);
  const [dateFrom, setDateFrom] = useState('');
  const [dateTo, setDateTo] = useState('');
  const dates = dateRange(dateFrom, dateTo);
  const [page, setPage] = useState(1);
  const backOff = useMemo(() => new BackOff(), []);

  // Searching as one types, one request per pause.
  useEffect(() => {
    const t = setTimeout(() => {
      setQ(search.trim());
      setPage(1);
    }, 300);
    return () => clearTimeout(t);
  }, [search]);

  const jobs = useQuery({
    queryKey: ['jobs', status, category, q, dates.study_date_from, dates.study_date_to, sort, page],
    queryFn: async () => {
      try {
        return await ok(
          client.GET('/v1/jobs', {
            params: {
              query: {
                status: status ? [status] : undefined,
                category: category ? [category] : undefined,
                q: q || undefined,
                ...dates,
                sort,
                limit: PAGE_SIZE,
                offset: (page - 1) * PAGE_SIZE,
              },
            },
          }),
        );
      } catch (e) {
        if (e instanceof ApiFailure && e.status === 401) onUnauthorized();
        throw e;
      }
    },
    refetchInterval: (query) => backOff.interval(query.state.data?.items ?? []),
  });

  const sorted = (field: SortField) => ({
    sorter: true,
    sortOrder: sortOrder(sort, field),
    sortDirections: ['ascend' as const, 'descend' as const],
  });
  const columns = [
    {
      title: 'Patient',
      key: 'patient_id',
      ...sorted('patient_id'),
      // The patient (or pseudonym) once the study was read, with the name it was sent as.
      render: (_: unknown, job: Job) => {
        const patient = job.study?.patient_id;
        const sent = job.external_id || job.id;
        return (
          <a href={`#/jobs/${job.id}`}>
            {patient ? (
              <>
                {patient}
                <br />
                <small>{sent}</small>
              </>
            ) : (
              sent
            )}
          </a>
        );
      },
    },
    { title: 'Accession', key: 'accession_number', ...sorted('accession_number'), render: (_: unknown, job: Job) => job.study?.accession_number ?? '' },
    { title: 'Study date', key: 'study_date', ...sorted('study_date'), render: (_: unknown, job: Job) => studyDate(job.study?.study_date) },
    {
      title: 'Series',
      key: 'series',
      render: (_: unknown, job: Job) => job.study?.series_description ?? '',
    },
    {
      title: 'Category',
      key: 'category',
      ...sorted('category'),
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
    { title: 'Status', key: 'status', ...sorted('status'), render: (_: unknown, job: Job) => <StatusTag status={job.status} /> },
    { title: 'Created', key: 'created_at', ...sorted('created_at'), render: (_: unknown, job: Job) => formatTime(job.created_at) },
  ];

  return (
    <Space direction="vertical" size="large" style={{ width: '100%' }}>
      {mayUpload && (
        <Card title={<Typography.Title level={2} style={{ fontSize: 18, margin: 0 }}>Upload a study</Typography.Title>}>
          <Uploader />
        </Card>
      )}
      <Card
        title={<Typography.Title level={2} style={{ fontSize: 18, margin: 0 }}>Worklist</Typography.Title>}
        extra={
          <Space wrap>
            <Input.Search
              aria-label="Search patient, accession, series or file name"
              placeholder="Search patient, accession, series"
              allowClear
              style={{ width: 260 }}
              value={search}
              onChange={(e) => setSearch(e.target.value)}
              data-testid="worklist-search"
            />
            <Select
              aria-label="Filter by category"
              allowClear
              placeholder="any category"
              style={{ width: 200 }}
              value={category}
              onChange={(v) => {
                setCategory(v);
                setPage(1);
              }}
              options={CATEGORY_OPTIONS.map((o) => ({ ...o }))}
            />
            <Space.Compact>
              <Input
                type="date"
                aria-label="Study date from"
                title="Study date from"
                style={{ width: 150 }}
                value={dateFrom}
                onChange={(e) => {
                  setDateFrom(e.target.value);
                  setPage(1);
                }}
                data-testid="study-date-from"
              />
              <Input
                type="date"
                aria-label="Study date to"
                title="Study date to"
                style={{ width: 150 }}
                value={dateTo}
                onChange={(e) => {
                  setDateTo(e.target.value);
                  setPage(1);
                }}
                data-testid="study-date-to"
              />
            </Space.Compact>
            <Select
              id="status-filter"
              aria-label="Filter by status"
              allowClear
              placeholder="any status"
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
          locale={{
            emptyText: (
              <Typography.Text>
                {status || category || q || dateFrom || dateTo
                  ? 'No job matches these filters.'
                  : mayUpload
                    ? 'No jobs yet. Upload a study above to start one.'
                    : 'No jobs yet. Your role (viewer) can read studies that others upload.'}
              </Typography.Text>
            ),
          }}
          onChange={(_p, _f, sorter, extra) => {
            if (extra.action !== 'sort') return; // paging: the pagination's own onChange
            const one = (Array.isArray(sorter) ? sorter[0] : sorter) as SorterResult<Job>;
            setSort(sortKey(one?.columnKey, one?.order));
            setPage(1);
          }}
          pagination={{
            current: page,
            pageSize: PAGE_SIZE,
            total: jobs.data?.total ?? 0,
            showSizeChanger: false,
            onChange: (p) => setPage(p),
            hideOnSinglePage: true,
          }}
        />
      </Card>
    </Space>
  );
}
