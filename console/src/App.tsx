import { useEffect, useMemo, useState } from 'react';
import { Button, Layout, Space, Typography } from 'antd';
import { useQueryClient } from '@tanstack/react-query';
import { clearKey, loadKey, saveKey } from './lib/auth';
import { makeClient } from './api/client';
import { SignIn } from './components/SignIn';
import { JobsPage } from './components/JobsPage';
import { JobPage } from './components/JobPage';
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
  const [apiKey, setApiKey] = useState<string | null>(() => loadKey());
  const route = useHashRoute();
  const queryClient = useQueryClient();
  const client = useMemo(() => (apiKey ? makeClient(apiKey) : null), [apiKey]);

  const signOut = () => {
    clearKey();
    queryClient.clear();
    setApiKey(null);
    window.location.hash = '/';
  };

  const jobMatch = route.match(/^\/jobs\/([A-Za-z0-9_-]+)$/);
  return (
    <Layout style={{ minHeight: '100vh' }}>
      <Layout.Header style={{ display: 'flex', alignItems: 'center', justifyContent: 'space-between', background: '#0b2e59' }}>
        <a href="#/" style={{ color: '#fff', fontSize: 18, fontWeight: 600 }}>
          covidct console
        </a>
        {apiKey && (
          <Space>
            <Button onClick={signOut}>Sign out</Button>
          </Space>
        )}
      </Layout.Header>
      <Layout.Content style={{ padding: '16px 24px', maxWidth: 1280, width: '100%', margin: '0 auto' }}>
        <main>
          {route === '/model-card' ? (
            <ModelCardPage />
          ) : !apiKey || !client ? (
            <SignIn
              onSignedIn={(key) => {
                saveKey(key);
                setApiKey(key);
              }}
            />
          ) : (
            <ApiContext.Provider value={{ client, apiKey, onUnauthorized: signOut }}>
              {/* Above the pages: uploads survive in-app navigation (issue 20.8). */}
              <UploadProvider key={apiKey}>
                <UploadProgressLine />
                {jobMatch ? <JobPage jobId={jobMatch[1]} /> : <JobsPage />}
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
