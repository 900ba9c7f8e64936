// Console sign-in (the gateway's /v1/session): a person signs in with tenant, username and
// password (or single sign-on); the gateway sets an HTTP-only cookie that this code never
// sees, and answers a CSRF token that goes with every request that changes state. A
// machine-style API key (pasted) still works and is sent as a Bearer header instead.
export type Role = 'viewer' | 'uploader' | 'admin';

export type Auth =
  | { kind: 'key'; apiKey: string }
  | { kind: 'session'; csrf: string; username: string; role: Role; tenant: string };

export const CSRF_HEADER = 'X-CSRF-Token';
const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

type Fetch = typeof fetch;

export class SignInFailure extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The headers that authenticate a request of ``method``: the key, or the CSRF token of
 * the session for a method that changes state (the cookie goes by itself). */
export function authHeaders(auth: Auth, method: string): Record<string, string> {
  if (auth.kind === 'key') return { Authorization: `Bearer ${auth.apiKey}` };
  return SAFE.has(method.toUpperCase()) ? {} : { [CSRF_HEADER]: auth.csrf };
}

/** Whether ``auth`` has at least ``needed`` (API keys act as their tenant's admin). */
export function allows(auth: Auth, needed: Role): boolean {
  const order: Role[] = ['viewer', 'uploader', 'admin'];
  const role: Role = auth.kind === 'key' ? 'admin' : auth.role;
  return order.indexOf(role) >= order.indexOf(needed);
}

async function failure(response: Response): Promise<SignInFailure> {
  let body: { code?: string; message?: string } = {};
  try {
    body = await response.json();
  } catch {
    // not JSON: keep the status
  }
  return new SignInFailure(response.status, body.code ?? `http_${response.status}`, body.message ?? response.statusText);
}

interface SessionBody {
  tenant: string;
  username: string | null;
  role: Role;
  auth: string;
  csrf_token: string | null;
}

function asSession(body: SessionBody): Auth {
  if (body.auth !== 'session' || !body.username || !body.csrf_token) throw new SignInFailure(500, 'bad_session', 'not a console session');
  return { kind: 'session', csrf: body.csrf_token, username: body.username, role: body.role, tenant: body.tenant };
}

export async function login(tenant: string, username: string, password: string, fetchImpl: Fetch = fetch): Promise<Auth> {
  const response = await fetchImpl('/v1/session', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ tenant: tenant.trim(), username: username.trim(), password }),
  });
  if (!response.ok) throw await failure(response);
  return asSession(await response.json());
}

/** The session the browser's cookie holds, or null (none, expired or signed out). */
export async function currentSession(fetchImpl: Fetch = fetch): Promise<Auth | null> {
  const response = await fetchImpl('/v1/session', { credentials: 'same-origin' });
  if (response.status === 401) return null;
  if (!response.ok) throw await failure(response);
  const body = (await response.json()) as SessionBody;
  return body.auth === 'session' ? asSession(body) : null;
}

export async function logout(auth: Auth, fetchImpl: Fetch = fetch): Promise<void> {
  if (auth.kind !== 'session') return;
  const response = await fetchImpl('/v1/session', {
    method: 'DELETE',
    credentials: 'same-origin',
    headers: authHeaders(auth, 'DELETE'),
  });
  if (!response.ok && response.status !== 401) throw await failure(response);
}

/** Whether single sign-on is configured (the Login page shows its button then). */
export async function ssoEnabled(fetchImpl: Fetch = fetch): Promise<boolean> {
  try {
    const response = await fetchImpl('/v1/session/methods');
    return response.ok && Boolean((await response.json()).sso);
  } catch {
    return false;
  }
}

export const SSO_START = '/v1/session/sso';

export interface AuditEvent {
  id: number;
  at: string;
  actor: string;
  action: string;
  job_id: string | null;
  client_address: string | null;
  detail: Record<string, unknown> | null;
}

/** One audit event per line (the export's NDJSON); blank lines are skipped. */
export function parseNdjson(text: string): AuditEvent[] {
  return text
    .split('\n')
    .filter((line) => line.trim())
    .map((line) => JSON.parse(line) as AuditEvent);
}

/** A page of the audit trail after ``afterId`` (oldest first), and its raw NDJSON text. */
export async function fetchAudit(auth: Auth, afterId = 0, limit = 500, fetchImpl: Fetch = fetch): Promise<{ events: AuditEvent[]; text: string }> {
  const query = new URLSearchParams({ after_id: String(afterId), limit: String(limit) });
  const response = await fetchImpl(`/v1/audit?${query}`, { credentials: 'same-origin', headers: authHeaders(auth, 'GET') });
  if (!response.ok) throw await failure(response);
  const text = await response.text();
  return { events: parseNdjson(text), text };
}
