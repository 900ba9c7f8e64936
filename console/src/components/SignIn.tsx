import { useState } from 'react';
import { Alert, Button, Card, Form, Input, Typography } from 'antd';
import { makeClient, ok } from '../api/client';
import { ApiFailure, errorText } from '../lib/errors';

export function SignIn({ onSignedIn }: { onSignedIn: (key: string) => void }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async ({ apiKey }: { apiKey: string }) => {
    setBusy(true);
    setError(null);
    const key = apiKey.trim();
    try {
      await ok(makeClient(key).GET('/v1/jobs', { params: { query: { limit: 1 } } }));
      onSignedIn(key);
    } catch (e) {
      setError(e instanceof ApiFailure ? e.text : errorText('network'));
    } finally {
      setBusy(false);
    }
  };

  return (
    <Card style={{ maxWidth: 520, margin: '48px auto' }}>
      <Typography.Title level={1} style={{ fontSize: 24 }}>
        Sign in
      </Typography.Title>
      <Typography.Paragraph>
        Paste the API key your administrator gave you (it starts with <code>cct_</code>). It is kept only in this browser
        tab and is forgotten when you sign out or close the tab.
      </Typography.Paragraph>
      <Form layout="vertical" onFinish={submit} requiredMark={false}>
        <Form.Item label="API key" name="apiKey" rules={[{ required: true, message: 'Paste your API key' }]}>
          <Input.Password autoComplete="off" placeholder="cct_..." />
        </Form.Item>
        {error && <Alert type="error" showIcon title={error} role="alert" style={{ marginBottom: 16 }} />}
        <Button type="primary" htmlType="submit" loading={busy}>
          Sign in
        </Button>
      </Form>
    </Card>
  );
}
