import { useEffect, useState } from 'react';
import { Alert, Button, Card, Divider, Form, Input, Tabs, Typography } from 'antd';
import { makeClient, ok } from '../api/client';
import { ApiFailure, errorText, ssoError } from '../lib/errors';
import { login, SignInFailure, SSO_START, ssoEnabled, type Auth } from '../lib/session';

function PasswordForm({ onSignedIn }: { onSignedIn: (auth: Auth) => void }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (values: { tenant: string; username: string; password: string }) => {
    setBusy(true);
    setError(null);
    try {
      onSignedIn(await login(values.tenant, values.username, values.password));
    } catch (e) {
      setError(e instanceof SignInFailure ? errorText(e.code, e.message) : errorText('network'));
    } finally {
      setBusy(false);
    }
  };

  return (
    <Form layout="vertical" onFinish={submit} requiredMark={false}>
      <Form.Item label="Organisation" name="tenant" rules={[{ required: true, message: 'Enter your organisation' }]}>
        <Input autoComplete="organization" />
      </Form.Item>
      <Form.Item label="Username" name="username" rules={[{ required: true, message: 'Enter your username' }]}>
        <Input autoComplete="username" />
      </Form.Item>
      <Form.Item label="Password" name="password" rules={[{ required: true, message: 'Enter your password' }]}>
        <Input.Password autoComplete="current-password" />
      </Form.Item>
      {error && <Alert type="error" showIcon title={error} role="alert" style={{ marginBottom: 16 }} />}
      <Button type="primary" htmlType="submit" loading={busy}>
        Sign in
      </Button>
    </Form>
  );
}

function ApiKeyForm({ onSignedIn }: { onSignedIn: (auth: Auth) => void }) {
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async ({ apiKey }: { apiKey: string }) => {
    setBusy(true);
    setError(null);
    const key = apiKey.trim();
    try {
      await ok(makeClient(key).GET('/v1/jobs', { params: { query: { limit: 1 } } }));
      onSignedIn({ kind: 'key', apiKey: key });
    } catch (e) {
      setError(e instanceof ApiFailure ? e.text : errorText('network'));
    } finally {
      setBusy(false);
    }
  };

  return (
    <>
      <Typography.Paragraph>
        For integrators: paste a tenant API key (it starts with <code>cct_</code>). It is kept only in this browser tab and is
        forgotten when you sign out or close the tab.
      </Typography.Paragraph>
      <Form layout="vertical" onFinish={submit} requiredMark={false}>
        <Form.Item label="API key" name="apiKey" rules={[{ required: true, message: 'Paste your API key' }]}>
          <Input.Password autoComplete="off" placeholder="cct_..." />
        </Form.Item>
        {error && <Alert type="error" showIcon title={error} role="alert" style={{ marginBottom: 16 }} />}
        <Button type="primary" htmlType="submit" loading={busy}>
          Sign in with the key
        </Button>
      </Form>
    </>
  );
}

export function SignIn({ onSignedIn }: { onSignedIn: (auth: Auth) => void }) {
  const [sso, setSso] = useState(false);
  // A failed single sign-on comes back as ?sso_error=<code>: say it in words, once (the
  // address is cleaned so that a reload does not repeat it).
  const [ssoFailure] = useState(() => ssoError(window.location.search));
  useEffect(() => {
    if (ssoFailure) window.history.replaceState(null, '', `${window.location.pathname}${window.location.hash || '#/'}`);
  }, [ssoFailure]);
  useEffect(() => {
    let live = true;
    void ssoEnabled().then((on) => live && setSso(on));
    return () => {
      live = false;
    };
  }, []);

  return (
    <Card style={{ maxWidth: 520, margin: '48px auto' }}>
      <Typography.Title level={1} style={{ fontSize: 24 }}>
        Sign in
      </Typography.Title>
      {ssoFailure && (
        <Alert
          type="error"
          showIcon
          role="alert"
          data-testid="sso-error"
          title="Single sign-on failed"
          description={errorText(ssoFailure)}
          style={{ marginBottom: 16 }}
        />
      )}
      {sso && (
        <>
          <Button type="primary" block href={SSO_START}>
            Sign in with your organisation (single sign-on)
          </Button>
          <Divider plain>or</Divider>
        </>
      )}
      <Tabs
        items={[
          { key: 'password', label: 'Your account', children: <PasswordForm onSignedIn={onSignedIn} /> },
          { key: 'key', label: 'For integrators', children: <ApiKeyForm onSignedIn={onSignedIn} /> },
        ]}
      />
    </Card>
  );
}
