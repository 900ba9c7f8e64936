import { createContext, useContext } from 'react';
import type { Client } from './client';

export interface ApiContextValue {
  client: Client;
  apiKey: string;
  onUnauthorized: () => void;
}

export const ApiContext = createContext<ApiContextValue | null>(null);

export function useApi(): ApiContextValue {
  const value = useContext(ApiContext);
  if (!value) throw new Error('useApi outside ApiContext');
  return value;
}
