import { describe, expect, it } from 'vitest';
import { ApiFailure, errorText, ssoError } from '../src/lib/errors';

describe('error text', () => {
  it('reads a failed single sign-on from the address and puts every code in words', () => {
    expect(ssoError('?sso_error=sso_user_unknown')).toBe('sso_user_unknown');
    expect(ssoError('')).toBeNull();
    expect(ssoError('?sso_error=%3Cscript%3E')).toBeNull(); // only a code, never markup
    for (const code of ['sso_unavailable', 'sso_not_configured', 'sso_state_mismatch', 'sso_denied', 'sso_code_refused', 'sso_invalid_token', 'sso_user_unknown', 'cross_origin_session']) {
      expect(errorText(code)).not.toMatch(/^Error:/);
    }
  });

  it('puts every failed-job code of the API in words', () => {
    for (const code of [
      'unsupported_format',
      'corrupt_file',
      'no_ct_series',
      'empty_study',
      'too_many_slices',
      'unsafe_archive',
      'no_lung',
      'not_chest_ct',
      'checksum_mismatch',
      'upload_expired',
      'scorer_unavailable',
      'stage_crashed',
      'internal_error',
    ]) {
      const text = errorText(code, 'raw server message');
      expect(text).not.toContain('_');
      expect(text).not.toBe('raw server message');
    }
  });

  it('falls back to the server message, then to the code', () => {
    expect(errorText('brand_new_code', 'the server says why')).toBe('the server says why');
    expect(errorText('brand_new_code', '')).toBe('Error: brand_new_code');
    expect(errorText(null)).toBe('Unknown error');
  });

  it('explains a wrong key', () => {
    expect(new ApiFailure(401, 'unauthorized', 'unknown API key').text).toMatch(/key was not accepted/);
  });
});
