// The API key lives in sessionStorage only (this tab, gone when it closes); it is sent as
// a Bearer header and never put in a URL.
const KEY = 'covidct.apiKey';

export function loadKey(storage: Storage = sessionStorage): string | null {
  return storage.getItem(KEY);
}

export function saveKey(key: string, storage: Storage = sessionStorage): void {
  storage.setItem(KEY, key.trim());
}

export function clearKey(storage: Storage = sessionStorage): void {
  storage.removeItem(KEY);
}
