// Error codes of the API (services/common/errors.py, gateway errors) in words a user
// understands; the server's message follows as detail.
const WORDS: Record<string, string> = {
  unsupported_format:
    'This file type is not supported. Upload a zip or tar of DICOM files, a NIfTI file, or PNG/JPEG images.',
  corrupt_file: 'The file is damaged or incomplete and could not be read. Export the study again and upload it.',
  no_ct_series: 'No CT series was found in the upload. Check that the archive holds the chest CT series.',
  empty_study: 'The upload holds no images.',
  too_many_slices: 'The series has more slices than the service accepts.',
  unsafe_archive: 'The archive was refused for safety (too large when unpacked, or unsafe file names).',
  no_lung: 'No lung tissue was found in any slice, so no verdict can be given.',
  not_chest_ct: 'These images do not look like a chest CT (for example a photo, a radiograph or a head CT).',
  checksum_mismatch: 'The file arrived damaged (its checksum did not match). Upload it again.',
  upload_expired: 'The upload was never completed and has expired. Start a new upload.',
  scorer_unavailable: 'The scoring model was unavailable. Try again later; if it persists, contact the administrator.',
  stage_crashed:
    'Processing this study stopped the server several times, so it was set aside for the administrator to investigate.',
  internal_error: 'Something went wrong on the server. Try again; if it persists, contact the administrator.',
  unauthorized: 'This API key was not accepted. Check that you pasted the whole key.',
  too_many_failed_auth: 'Too many failed sign-ins from this address. Wait a minute and try again.',
  bad_credentials: 'Unknown organisation, username or password.',
  forbidden: 'Your role does not allow this. Ask an administrator of your organisation.',
  csrf_failed: 'Your session could not be verified. Sign out and sign in again.',
  job_not_found: 'This job does not exist, or it belongs to another account.',
  network: 'The server could not be reached. Check your connection.',
  cross_origin_session:
    'This console must be opened from the covidct server itself; sessions from another web address are refused.',
  // Single sign-on that failed (the gateway sends the browser back with ?sso_error=<code>).
  sso_unavailable: 'Single sign-on is unavailable: the identity provider did not answer. Try again later, or sign in with your password.',
  sso_not_configured: 'Single sign-on is not set up on this server. Sign in with your password.',
  sso_state_mismatch: 'The single sign-on took too long or was started elsewhere. Start it again from this page.',
  sso_denied: 'Single sign-on was cancelled or refused at your organisation. Start it again, or sign in with your password.',
  sso_code_refused: 'Your organisation refused the sign-in. Start it again; if it persists, contact the administrator.',
  sso_invalid_token: 'The sign-in from your organisation could not be verified. Start it again; if it persists, contact the administrator.',
  sso_user_unknown: 'You signed in at your organisation, but you have no account here yet. Ask an administrator to add you.',
};

/** The code of a failed single sign-on that the gateway put in the address
 * (``/?sso_error=<code>#/``), or null. */
export function ssoError(search: string): string | null {
  const code = new URLSearchParams(search).get('sso_error');
  return code && /^[a-z_]{1,64}$/.test(code) ? code : null;
}

export function errorText(code: string | null | undefined, message?: string | null): string {
  const words = code ? WORDS[code] : undefined;
  if (words) return words;
  if (message) return message;
  return code ? `Error: ${code}` : 'Unknown error';
}

export class ApiFailure extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }

  get text(): string {
    return errorText(this.code, this.message);
  }
}
