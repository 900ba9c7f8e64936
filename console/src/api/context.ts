import { createContext, useContext } from 'react';
import type { Client } from './client';
import type { Auth } from '../lib/session';

export interface ApiContextValue {
  client: Client;
  apiKey: string; // '' when a console session (cookie) authenticates
  auth: Auth;
  onUnauthorized: () => void;
}

export const ApiContext = createContext<ApiContextValue | null>(null);

export function useApi(): ApiContextValue {
  const value = useContext(ApiContext);
  if (!value) throw new Error('useApi outside ApiContext');
  return value;
}
