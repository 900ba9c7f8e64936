import { useCallback, useEffect, useState } from 'react';
import { Alert, Button, Space, Table, Typography } from 'antd';
import { useApi } from '../api/context';
import { errorText } from '../lib/errors';
import { fetchAudit, SignInFailure, type AuditEvent } from '../lib/session';

const PAGE = 500;

const ACTIONS: Record<string, string> = {
  login: 'Signed in',
  login_failed: 'Failed sign-in',
  logout: 'Signed out',
  job_create: 'Created job',
  job_view: 'Viewed job',
  job_delete: 'Deleted or cancelled job',
  report_view: 'Downloaded report',
  slice_view: 'Viewed images',
  user_create: 'Created user',
  user_delete: 'Deleted user',
  user_role_change: 'Changed role',
  user_password_change: 'Changed password',
  audit_export: 'Exported audit trail',
  destination_add: 'Added result destination',
  destination_remove: 'Removed result destination',
};

/** The tenant's audit trail (admins): who did what, when, from where; downloadable as
 * JSON lines. */
export function AuditPage() {
  const { auth } = useApi();
  const [events, setEvents] = useState<AuditEvent[]>([]);
  const [text, setText] = useState('');
  const [more, setMore] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const load = useCallback(
    async (afterId: number) => {
      setBusy(true);
      try {
        const page = await fetchAudit(auth, afterId, PAGE);
        setEvents((old) => (afterId ? [...old, ...page.events] : page.events));
        setText((old) => (afterId ? old + page.text : page.text));
        setMore(page.events.length === PAGE);
        setError(null);
      } catch (e) {
        setError(e instanceof SignInFailure ? errorText(e.code, e.message) : errorText('network'));
      } finally {
        setBusy(false);
      }
    },
    [auth],
  );

  useEffect(() => {
    void load(0);
  }, [load]);

  const download = () => {
    const url = URL.createObjectURL(new Blob([text], { type: 'application/x-ndjson' }));
    const link = document.createElement('a');
    link.href = url;
    link.download = 'covidct-audit.ndjson';
    link.click();
    URL.revokeObjectURL(url);
  };

  return (
    <section aria-labelledby="audit-title">
      <Typography.Title level={1} id="audit-title" style={{ fontSize: 22 }}>
        Audit trail
      </Typography.Title>
      <Typography.Paragraph>
        Every sign-in, upload, view, report download and deletion in your organisation, oldest first. The trail cannot be changed.
      </Typography.Paragraph>
      {error && <Alert type="error" showIcon title={error} role="alert" style={{ marginBottom: 16 }} />}
      <Space style={{ marginBottom: 12 }}>
        <Button onClick={() => void load(0)} loading={busy}>
          Refresh
        </Button>
        <Button onClick={download} disabled={!text}>
          Download (JSON lines)
        </Button>
        {more && events.length > 0 && (
          <Button onClick={() => void load(events[events.length - 1].id)} loading={busy}>
            Load more
          </Button>
        )}
      </Space>
      <Table<AuditEvent>
        rowKey="id"
        size="small"
        dataSource={events}
        pagination={{ pageSize: 50 }}
        columns={[
          { title: 'When (UTC)', dataIndex: 'at', render: (at: string) => at.replace('T', ' ').slice(0, 19) },
          { title: 'Who', dataIndex: 'actor' },
          { title: 'What', dataIndex: 'action', render: (action: string) => ACTIONS[action] ?? action },
          { title: 'Job', dataIndex: 'job_id', render: (id: string | null) => (id ? <a href={`#/jobs/${id}`}>{id.slice(0, 8)}</a> : '') },
          { title: 'From', dataIndex: 'client_address' },
          { title: 'Details', dataIndex: 'detail', render: (detail: Record<string, unknown> | null) => (detail ? JSON.stringify(detail) : '') },
        ]}
      />
    </section>
  );
}
