import { useEffect, useMemo, useState } from 'react';
import { Button, Layout, Space, Typography } from 'antd';
import { useQueryClient } from '@tanstack/react-query';
import { clearKey, loadKey, saveKey } from './lib/auth';
import { allows, currentSession, logout, type Auth } from './lib/session';
import { makeClient } from './api/client';
import { SignIn } from './components/SignIn';
import { JobsPage } from './components/JobsPage';
import { JobPage } from './components/JobPage';
import { AuditPage } from './components/AuditPage';
import { ApiContext } from './api/context';
import { UploadProgressLine, UploadProvider } from './components/UploadStore';
import { ModelCardPage } from './components/ModelCardPage';

function useHashRoute(): string {
  const [hash, setHash] = useState(window.location.hash);
  useEffect(() => {
    const onChange = () => setHash(window.location.hash);
    window.addEventListener('hashchange', onChange);
    return () => window.removeEventListener('hashchange', onChange);
  }, []);
  return hash.replace(/^#/, '') || '/';
}

export function App() {
  // A pasted API key (this tab), else the console session the cookie holds (checked once).
  const [auth, setAuth] = useState<Auth | null>(() => {
    const key = loadKey();
    return key ? { kind: 'key', apiKey: key } : null;
  });
  const [checked, setChecked] = useState(auth !== null);
  const route = useHashRoute();
  const queryClient = useQueryClient();
  const client = useMemo(() => (auth ? makeClient(auth) : null), [auth]);
  const apiKey = auth?.kind === 'key' ? auth.apiKey : '';

  useEffect(() => {
    if (checked) return;
    currentSession()
      .then((found) => found && setAuth(found))
      .catch(() => undefined)
      .finally(() => setChecked(true));
  }, [checked]);

  const signOut = () => {
    if (auth) void logout(auth).catch(() => undefined);
    clearKey();
    queryClient.clear();
    setAuth(null);
    window.location.hash = '/';
  };

  const jobMatch = route.match(/^\/jobs\/([A-Za-z0-9_-]+)$/);
  return (
    <Layout style={{ minHeight: '100vh' }}>
      <Layout.Header style={{ display: 'flex', alignItems: 'center', justifyContent: 'space-between', background: '#0b2e59' }}>
        <a href="#/" style={{ color: '#fff', fontSize: 18, fontWeight: 600 }}>
          covidct console
        </a>
        {auth && (
          <Space>
            <Typography.Text style={{ color: '#fff' }}>
              {auth.kind === 'session' ? `${auth.username} (${auth.role}, ${auth.tenant})` : 'API key'}
            </Typography.Text>
            {allows(auth, 'admin') && (
              <a href="#/audit" style={{ color: '#fff' }}>
                Audit
              </a>
            )}
            <Button onClick={signOut}>Sign out</Button>
          </Space>
        )}
      </Layout.Header>
      <Layout.Content style={{ padding: '16px 24px', maxWidth: 1280, width: '100%', margin: '0 auto' }}>
        <main>
          {route === '/model-card' ? (
            <ModelCardPage />
          ) : !checked ? null : !auth || !client ? (
            <SignIn
              onSignedIn={(signed) => {
                if (signed.kind === 'key') saveKey(signed.apiKey);
                setAuth(signed);
              }}
            />
          ) : (
            <ApiContext.Provider value={{ client, apiKey, auth, onUnauthorized: signOut }}>
              {/* Above the pages: uploads survive in-app navigation (issue 20.8). */}
              <UploadProvider key={auth.kind === 'key' ? auth.apiKey : `${auth.tenant}/${auth.username}`}>
                <UploadProgressLine />
                {route === '/audit' && allows(auth, 'admin') ? <AuditPage /> : jobMatch ? <JobPage jobId={jobMatch[1]} /> : <JobsPage />}
              </UploadProvider>
            </ApiContext.Provider>
          )}
        </main>
      </Layout.Content>
      <Layout.Footer style={{ textAlign: 'center' }}>
        <Typography.Text>
          covidct is research software, not a medical device: it must not be used to diagnose or treat patients.{' '}
          <a href="#/model-card">Model card</a>
        </Typography.Text>
      </Layout.Footer>
    </Layout>
  );
}
