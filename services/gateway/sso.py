"""Optional OpenID Connect single sign-on (authorization code flow; authlib builds the
OAuth 2.0 requests, joserfc (authlib's JOSE library) verifies the ID token).

``GET /v1/session/sso`` sends the browser to the issuer with a fresh ``state`` and
``nonce`` (kept in a short-lived HTTP-only cookie, SameSite=Lax so that it comes back on
the issuer's redirect); ``GET /v1/session/sso/callback`` checks the state, exchanges the
code at the token endpoint, verifies the ID token (signature from the issuer's JWKS,
issuer, audience, nonce, expiry), then signs the user in exactly as a password would: the
``oidc_username_claim`` names a user of ``oidc_tenant``. Discovery and keys are fetched at
every sign-in, so a key rotation at the issuer needs nothing here.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import BaseModel
from sqlalchemy import select

from services.common.accounts import AccountError, create_user, start_session, user_by_name
from services.common.audit import Action, record
from services.common.config import Settings, get_settings
from services.common.db import session_scope
from services.common.orm import Tenant
from services.gateway.accounts import set_session_cookie
from services.gateway.errors import ApiError, error_responses

router = APIRouter(prefix="/v1/session", tags=["users"])

STATE_COOKIE = "covidct_sso"
STATE_TTL_S = 600
HTTP_TIMEOUT_S = 10.0
ID_TOKEN_ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]


class Methods(BaseModel):
    password: bool
    sso: bool


def sso_configured(settings: Settings) -> bool:
    return bool(settings.oidc_issuer and settings.oidc_client_id and settings.oidc_tenant)


def _fetch_tokens(settings: Settings, token_endpoint: str, code: str, redirect: str) -> Any:
    """The code exchanged at the token endpoint (client_secret_basic, RFC 6749 4.1.3)."""
    secret = settings.oidc_client_secret
    response = httpx.post(
        token_endpoint,
        content=prepare_token_request("authorization_code", code=code, redirect_uri=redirect),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=(settings.oidc_client_id or "", secret.get_secret_value() if secret else ""),
        timeout=HTTP_TIMEOUT_S,
    )
    response.raise_for_status()
    return response.json()


def _discovery(settings: Settings) -> dict[str, Any]:
    url = f"{(settings.oidc_issuer or '').rstrip('/')}/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        found = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        message = f"the identity provider did not answer: {exc}"
        raise ApiError(502, "sso_unavailable", message) from None
    if found.get("issuer") != settings.oidc_issuer:  # OpenID Connect Discovery 1.0, 4.3
        raise ApiError(502, "sso_unavailable", "the provider's issuer is not the configured one")
    return dict(found)


def _redirect_uri(request: Request) -> str:
    return str(request.url_for("sso_callback"))


def _configured() -> Settings:
    settings = get_settings()
    if not sso_configured(settings):
        raise ApiError(404, "sso_not_configured", "single sign-on is not configured")
    return settings


@router.get("/methods", response_model=Methods)
def methods() -> Any:
    """How one may sign in here (the console shows the SSO button when ``sso``)."""
    return {"password": True, "sso": sso_configured(get_settings())}


@router.get("/sso", status_code=302, responses=error_responses(404))
def sso_start(request: Request) -> RedirectResponse:
    """Send the browser to the identity provider (back to the sign-in page with
    ``?sso_error=<code>`` when that cannot be done)."""
    try:
        settings = _configured()
        provider = _discovery(settings)
    except ApiError as failure:
        return _failed(request, failure)
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    url = prepare_grant_uri(
        provider["authorization_endpoint"], settings.oidc_client_id, "code",
        redirect_uri=_redirect_uri(request), scope=settings.oidc_scopes, state=state, nonce=nonce,
    )  # fmt: skip
    response = RedirectResponse(url, status_code=302)
    response.set_cookie(
        STATE_COOKIE, f"{state}.{nonce}", max_age=STATE_TTL_S, path="/v1/session/sso",
        httponly=True, secure=request.url.scheme == "https", samesite="lax",
    )  # fmt: skip
    return response


def _verified_claims(
    settings: Settings, provider: dict[str, Any], id_token: str, nonce: str
) -> dict[str, Any]:
    try:
        keys = httpx.get(provider["jwks_uri"], timeout=HTTP_TIMEOUT_S)
        keys.raise_for_status()
        token = jwt.decode(id_token, KeySet.import_key_set(keys.json()), ID_TOKEN_ALGORITHMS)
        jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": settings.oidc_issuer or ""},
            aud={"essential": True, "value": settings.oidc_client_id or ""},
            nonce={"essential": True, "value": nonce},
            exp={"essential": True},
        ).validate(token.claims)
    except (httpx.HTTPError, ValueError, JoseError) as exc:
        raise ApiError(401, "sso_invalid_token", f"the ID token was refused: {exc}") from None
    return dict(token.claims)


# Where a browser that failed to sign in lands: the console's sign-in page, which reads
# the code and says what went wrong in words (a JSON body would be a dead end for a person).
SIGN_IN_FAILED = "/?sso_error={code}#/"


def _wants_html(request: Request) -> bool:
    """A browser navigating (Accept: text/html), not an API client."""
    return "text/html" in request.headers.get("accept", "")


def _failed(request: Request, error: ApiError) -> RedirectResponse:
    """The failure as a redirect to the console's sign-in page (a browser) or as the usual
    JSON problem (an API client)."""
    if not _wants_html(request):
        raise error
    response = RedirectResponse(SIGN_IN_FAILED.format(code=error.code), status_code=302)
    response.delete_cookie(STATE_COOKIE, path="/v1/session/sso")
    return response


@router.get("/sso/callback", status_code=302, responses=error_responses(400, 401, 403, 404))
def sso_callback(
    request: Request, code: str = "", state: str = "", error: str = ""
) -> RedirectResponse:
    """Where the identity provider sends the browser back: signs the user in, then to the
    console. A failure sends a browser back to the sign-in page with ``?sso_error=<code>``
    (an API client gets the JSON problem)."""
    try:
        return _callback(request, code, state, error)
    except ApiError as failure:
        return _failed(request, failure)


def _callback(request: Request, code: str, state: str, error: str) -> RedirectResponse:
    settings = _configured()
    if error:  # RFC 6749 4.1.2.1: the user declined, or the provider refused to ask
        raise ApiError(401, "sso_denied", f"the identity provider answered {error!r}")
    expected_state, _, nonce = request.cookies.get(STATE_COOKIE, "").partition(".")
    if not code or not expected_state or not secrets.compare_digest(expected_state, state):
        raise ApiError(400, "sso_state_mismatch", "sign-in expired or was not started here")
    provider = _discovery(settings)
    try:
        tokens = _fetch_tokens(settings, provider["token_endpoint"], code, _redirect_uri(request))
    except (httpx.HTTPError, ValueError) as exc:
        raise ApiError(401, "sso_code_refused", f"the identity provider refused: {exc}") from None
    if "id_token" not in tokens:
        raise ApiError(401, "sso_invalid_token", "the identity provider sent no ID token")
    claims = _verified_claims(settings, provider, str(tokens["id_token"]), nonce)
    username = str(claims.get(settings.oidc_username_claim) or "")
    address = request.client.host if request.client else None
    with session_scope() as session:
        tenant = session.scalar(select(Tenant).where(Tenant.name == settings.oidc_tenant))
        if tenant is None:
            raise ApiError(404, "sso_not_configured", "oidc_tenant names no tenant")
        user = user_by_name(session, tenant.id, username) if username else None
        if user is None and username and settings.oidc_auto_create_role:
            try:
                user = create_user(session, tenant, username, settings.oidc_auto_create_role, None)
            except AccountError:
                user = None
            else:
                record(
                    session, tenant.id, "sso", Action.USER_CREATE, client_address=address,
                    detail={"username": user.username, "role": user.role},
                )  # fmt: skip
        if user is None:
            record(
                session, tenant.id, f"user:{username or '?'}", Action.LOGIN_FAILED,
                client_address=address, detail={"via": "sso", "reason": "unknown_user"},
            )  # fmt: skip
            refused = ApiError(
                403, "sso_user_unknown", f"no user {username!r} here; ask an admin to add you"
            )
        else:
            refused = None
            token, expires = start_session(session, user, settings.session_ttl_s)
            record(
                session, tenant.id, f"user:{user.username}", Action.LOGIN,
                client_address=address, detail={"via": "sso"},
            )  # fmt: skip
    if refused is not None:  # after the commit: the failure stays in the trail
        raise refused
    response = RedirectResponse("/", status_code=302)
    response.delete_cookie(STATE_COOKIE, path="/v1/session/sso")
    set_session_cookie(request, response, token, expires)
    return response
