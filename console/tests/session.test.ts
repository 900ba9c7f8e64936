import { describe, expect, it } from 'vitest';
import { allows, authHeaders, currentSession, fetchAudit, login, logout, parseNdjson, SignInFailure, ssoEnabled, type Auth } from '../src/lib/session';

type Call = { url: string; init: RequestInit };

function fakeFetch(responses: Response[]): { fetch: typeof fetch; calls: Call[] } {
  const calls: Call[] = [];
  const fetchImpl = (async (url: string, init: RequestInit = {}) => {
    calls.push({ url, init });
    const next = responses.shift();
    if (!next) throw new Error('unexpected request');
    return next;
  }) as unknown as typeof fetch;
  return { fetch: fetchImpl, calls };
}

const json = (status: number, body: unknown) => new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
const SESSION = { tenant: 'alice', username: 'vera', role: 'viewer', auth: 'session', csrf_token: 'c'.repeat(64), expires_at: null };
const session: Auth = { kind: 'session', csrf: 'c'.repeat(64), username: 'vera', role: 'viewer', tenant: 'alice' };

describe('auth headers', () => {
  it('sends the key as a Bearer header on every method', () => {
    const key: Auth = { kind: 'key', apiKey: 'cct_x' };
    expect(authHeaders(key, 'GET')).toEqual({ Authorization: 'Bearer cct_x' });
    expect(authHeaders(key, 'POST')).toEqual({ Authorization: 'Bearer cct_x' });
  });
  it('sends the CSRF token only on methods that change state', () => {
    expect(authHeaders(session, 'GET')).toEqual({});
    expect(authHeaders(session, 'head')).toEqual({});
    for (const method of ['POST', 'PATCH', 'DELETE', 'put']) expect(authHeaders(session, method)).toEqual({ 'X-CSRF-Token': session.kind === 'session' ? session.csrf : '' });
  });
  it('orders roles; a key is its tenant admin', () => {
    expect(allows(session, 'viewer')).toBe(true);
    expect(allows(session, 'uploader')).toBe(false);
    expect(allows({ ...session, role: 'uploader' } as Auth, 'uploader')).toBe(true);
    expect(allows({ ...session, role: 'uploader' } as Auth, 'admin')).toBe(false);
    expect(allows({ kind: 'key', apiKey: 'cct_x' }, 'admin')).toBe(true);
  });
});

describe('sign in and out', () => {
  it('posts the credentials and keeps the CSRF token, never the password', async () => {
    const { fetch, calls } = fakeFetch([json(200, SESSION)]);
    const auth = await login(' alice ', 'vera ', 'pw with spaces ', fetch);
    expect(auth).toEqual(session);
    expect(calls[0].url).toBe('/v1/session');
    expect(calls[0].init.method).toBe('POST');
    expect(calls[0].init.credentials).toBe('same-origin');
    expect(JSON.parse(String(calls[0].init.body))).toEqual({ tenant: 'alice', username: 'vera', password: 'pw with spaces ' });
    expect(JSON.stringify(auth)).not.toContain('pw with spaces');
  });
  it('turns a refusal into its code', async () => {
    const { fetch } = fakeFetch([json(401, { code: 'bad_credentials', message: 'unknown tenant, username or password' })]);
    await expect(login('alice', 'vera', 'wrong', fetch)).rejects.toMatchObject({ status: 401, code: 'bad_credentials' });
    const throttled = fakeFetch([new Response('busy', { status: 429 })]);
    const error = await login('alice', 'vera', 'wrong', throttled.fetch).catch((e) => e);
    expect(error).toBeInstanceOf(SignInFailure);
    expect(error.code).toBe('http_429');
  });
  it('finds the session again after a reload, or none', async () => {
    expect(await currentSession(fakeFetch([json(200, SESSION)]).fetch)).toEqual(session);
    expect(await currentSession(fakeFetch([json(401, { code: 'unauthorized' })]).fetch)).toBeNull();
    const key = { ...SESSION, username: null, role: 'admin', auth: 'api_key', csrf_token: null };
    expect(await currentSession(fakeFetch([json(200, key)]).fetch)).toBeNull();
  });
  it('signs out with the CSRF token; an ended session is fine', async () => {
    const { fetch, calls } = fakeFetch([new Response(null, { status: 204 }), json(401, {})]);
    await logout(session, fetch);
    expect(calls[0].init.method).toBe('DELETE');
    expect(calls[0].init.headers).toEqual({ 'X-CSRF-Token': 'c'.repeat(64) });
    await logout(session, fetch);
    await logout({ kind: 'key', apiKey: 'cct_x' }, fetch); // nothing to end on the server
    expect(calls).toHaveLength(2);
  });
  it('asks whether single sign-on is on', async () => {
    expect(await ssoEnabled(fakeFetch([json(200, { password: true, sso: true })]).fetch)).toBe(true);
    expect(await ssoEnabled(fakeFetch([json(200, { password: true, sso: false })]).fetch)).toBe(false);
    expect(await ssoEnabled(fakeFetch([]).fetch)).toBe(false); // unreachable: no button
  });
});

describe('audit export', () => {
  const line = (id: number, action: string) => JSON.stringify({ id, at: '2026-12-04T02:00:00+00:00', actor: 'user:vera', action, job_id: null, client_address: '10.0.0.1', detail: null });
  it('parses JSON lines', () => {
    expect(parseNdjson(`${line(1, 'login')}\n${line(2, 'job_view')}\n`).map((e) => [e.id, e.action])).toEqual([
      [1, 'login'],
      [2, 'job_view'],
    ]);
    expect(parseNdjson('')).toEqual([]);
  });
  it('pages after the last id with the caller headers', async () => {
    const { fetch, calls } = fakeFetch([new Response(`${line(7, 'logout')}\n`, { status: 200 })]);
    const page = await fetchAudit({ kind: 'key', apiKey: 'cct_x' }, 6, 100, fetch);
    expect(calls[0].url).toBe('/v1/audit?after_id=6&limit=100');
    expect(calls[0].init.headers).toEqual({ Authorization: 'Bearer cct_x' });
    expect(page.events[0].action).toBe('logout');
    const refused = fakeFetch([json(403, { code: 'forbidden', message: 'needs the admin role' })]);
    await expect(fetchAudit(session, 0, 100, refused.fetch)).rejects.toMatchObject({ status: 403, code: 'forbidden' });
  });
});
