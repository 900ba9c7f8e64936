// The typed API client: types generated from the gateway's OpenAPI document
// (src/api/openapi.json -> schema.d.ts, `npm run gen:api`), so a changed API breaks the
// console's type check.
import createClient, { type Middleware } from 'openapi-fetch';
import type { components, paths } from './schema';
import { ApiFailure } from '../lib/errors';
import { authHeaders, type Auth } from '../lib/session';

export type Job = components['schemas']['JobOut'];
export type JobPage = components['schemas']['JobPage'];
export type JobCreated = components['schemas']['JobCreated'];
export type Slices = components['schemas']['SlicesOut'];
export type Slice = components['schemas']['SliceOut'];
export type JobEvents = components['schemas']['JobEventsOut'];
export type JobStatus = Job['status'];

/** A client that authenticates with an API key (a string) or a console session. */
export function makeClient(credentials: Auth | string, baseUrl = '') {
  const client = createClient<paths>({ baseUrl, credentials: 'same-origin' });
  const signed: Auth = typeof credentials === 'string' ? { kind: 'key', apiKey: credentials } : credentials;
  const auth: Middleware = {
    onRequest({ request }) {
      for (const [name, value] of Object.entries(authHeaders(signed, request.method))) request.headers.set(name, value);
      return request;
    },
  };
  client.use(auth);
  return client;
}

export type Client = ReturnType<typeof makeClient>;

export async function failure(response: Response, error: unknown): Promise<ApiFailure> {
  const body = (error ?? {}) as { code?: string; message?: string; detail?: string };
  return new ApiFailure(response.status, body.code ?? `http_${response.status}`, body.message ?? body.detail ?? response.statusText);
}

/** Unwraps an openapi-fetch result: its data, or throws an ApiFailure. */
export async function ok<T>(result: Promise<{ data?: T; error?: unknown; response: Response }>): Promise<T> {
  let r: { data?: T; error?: unknown; response: Response };
  try {
    r = await result;
  } catch {
    throw new ApiFailure(0, 'network', 'network error');
  }
  if (!r.response.ok || r.data === undefined) throw await failure(r.response, r.error);
  return r.data;
}

/** A binary resource (slice or heatmap PNG) as an object URL, fetched with the key (an
 * empty key: the session cookie authenticates). */
export async function imageUrl(apiKey: string, path: string): Promise<string> {
  const headers: Record<string, string> = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  const response = await fetch(path, { headers, credentials: 'same-origin' });
  if (!response.ok) throw new ApiFailure(response.status, 'not_found', 'image not found');
  return URL.createObjectURL(await response.blob());
}
