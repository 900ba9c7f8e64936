"""OpenID Connect single sign-on against a local test provider (tests/support/oidc_provider):
the whole authorization code flow, and every way an ID token or a callback can be wrong."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.asgi import create_app
from services.common.config import Settings
from tests.support.oidc_provider import Provider, oidc_provider
from tests.support.service import auth, make_tenant


@pytest.fixture
def provider() -> Iterator[Provider]:
    with oidc_provider() as found:
        found.user = {"sub": "u-1", "preferred_username": "sam"}
        yield found


@pytest.fixture
def sso_settings(
    isolated_settings: Callable[..., Settings], provider: Provider
) -> Callable[..., Settings]:
    def configure(**extra: str) -> Settings:
        return isolated_settings(
            broker_url="redis://127.0.0.1:1/0", oidc_issuer=provider.issuer,
            oidc_client_id=provider.client_id, oidc_client_secret=provider.client_secret,
            oidc_tenant="alice", **extra,
        )  # fmt: skip

    return configure


@pytest.fixture
def client(sso_settings: Callable[..., Settings], started: list[str]) -> Iterator[TestClient]:
    sso_settings()
    with TestClient(create_app()) as test_client:
        yield test_client


def start(client: TestClient) -> str:
    """The gateway's redirect to the provider; the provider's redirect back (a path)."""
    to_provider = client.get("/v1/session/sso", follow_redirects=False)
    assert to_provider.status_code == 302, to_provider.text
    assert "HttpOnly" in to_provider.headers["set-cookie"]
    assert "SameSite=lax" in to_provider.headers["set-cookie"]  # must come back from the IdP
    back = httpx.get(to_provider.headers["location"], follow_redirects=False)
    assert back.status_code == 302, back.text
    url = urlsplit(back.headers["location"])
    assert url.path == "/v1/session/sso/callback"
    return f"{url.path}?{url.query}"


def sso_login(client: TestClient) -> httpx.Response:
    return client.get(start(client), follow_redirects=False)


def test_methods_say_whether_sso_is_on(
    client: TestClient,
    isolated_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert client.get("/v1/session/methods").json() == {"password": True, "sso": True}
    monkeypatch.delenv("COVIDCT_OIDC_ISSUER")
    isolated_settings(broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app()) as plain:
        assert plain.get("/v1/session/methods").json() == {"password": True, "sso": False}
        off = plain.get("/v1/session/sso", follow_redirects=False)
        assert off.status_code == 404 and off.json()["code"] == "sso_not_configured"


def test_the_authorization_request(client: TestClient, provider: Provider) -> None:
    response = client.get("/v1/session/sso", follow_redirects=False)
    url = urlsplit(response.headers["location"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{provider.issuer}/authorize"
    assert query["response_type"] == "code" and query["client_id"] == "covidct"
    assert query["scope"] == "openid profile email"
    assert query["redirect_uri"] == "http://testserver/v1/session/sso/callback"
    assert len(query["state"]) >= 32 and len(query["nonce"]) >= 32
    again = urlsplit(client.get("/v1/session/sso", follow_redirects=False).headers["location"])
    assert parse_qs(again.query)["state"] != [query["state"]]  # fresh each time


def test_a_known_user_signs_in(client: TestClient, provider: Provider) -> None:
    alice = make_tenant("alice")
    body = {"username": "sam", "role": "uploader"}  # SSO only: no password
    assert client.post("/v1/users", json=body, headers=auth(alice)).status_code == 201
    done = sso_login(client)
    assert done.status_code == 302 and done.headers["location"] == "/"
    assert "covidct_session=" in done.headers["set-cookie"]
    me = client.get("/v1/session").json()
    assert (me["tenant"], me["username"], me["role"], me["auth"]) == (
        "alice", "sam", "uploader", "session",
    )  # fmt: skip
    created = client.post("/v1/jobs", json={}, headers={"X-CSRF-Token": me["csrf_token"]})
    assert created.status_code == 201
    trail = [line for line in client.get("/v1/audit", headers=auth(alice)).text.splitlines()]
    assert '"actor":"user:sam","action":"login"' in trail[1] and '"via":"sso"' in trail[1]
    # A password login is impossible for an SSO-only account.
    wrong = client.post("/v1/session", json={"tenant": "alice", "username": "sam",
                                             "password": "anything at all"})  # fmt: skip
    assert wrong.status_code == 401


def test_an_unknown_user_is_refused_unless_accounts_are_made(
    client: TestClient, sso_settings: Callable[..., Settings], provider: Provider
) -> None:
    alice = make_tenant("alice")
    refused = sso_login(client)
    assert refused.status_code == 403 and refused.json()["code"] == "sso_user_unknown"
    assert client.get("/v1/session").status_code == 401
    trail = client.get("/v1/audit", headers=auth(alice)).text
    assert '"action":"login_failed"' in trail and '"reason":"unknown_user"' in trail

    sso_settings(oidc_auto_create_role="viewer")
    with TestClient(create_app()) as auto:
        assert sso_login(auto).status_code == 302
        me = auto.get("/v1/session").json()
        assert (me["username"], me["role"]) == ("sam", "viewer")
    users = client.get("/v1/users", headers=auth(alice)).json()
    assert [(u["username"], u["role"], u["has_password"]) for u in users] == [
        ("sam", "viewer", False)
    ]


@pytest.mark.parametrize("tamper", ["nonce", "audience", "issuer", "expired", "signature"])
def test_a_wrong_id_token_is_refused(client: TestClient, provider: Provider, tamper: str) -> None:
    alice = make_tenant("alice")
    client.post("/v1/users", json={"username": "sam", "role": "admin"}, headers=auth(alice))
    provider.tamper = tamper
    refused = sso_login(client)
    assert refused.status_code == 401, refused.text
    assert refused.json()["code"] == "sso_invalid_token"
    assert "covidct_session" not in client.cookies


def test_a_forged_or_replayed_callback_is_refused(client: TestClient, provider: Provider) -> None:
    alice = make_tenant("alice")
    client.post("/v1/users", json={"username": "sam", "role": "admin"}, headers=auth(alice))
    callback = start(client)
    url = urlsplit(callback)
    code = parse_qs(url.query)["code"][0]
    forged = client.get(f"{url.path}?code={code}&state=guessed", follow_redirects=False)
    assert forged.status_code == 400 and forged.json()["code"] == "sso_state_mismatch"
    other = TestClient(client.app)  # another browser (no state cookie) with this code
    stolen = other.get(callback, follow_redirects=False)
    assert stolen.status_code == 400
    assert client.get(callback, follow_redirects=False).status_code == 302
    replay = client.get(start(client).split("?")[0] + "?" + url.query, follow_redirects=False)
    assert replay.status_code == 400  # the old state no longer matches the new cookie
    provider.client_secret = "rotated"  # the gateway's secret is now wrong
    refused = sso_login(client)
    assert refused.status_code == 401 and refused.json()["code"] == "sso_code_refused"


def test_issuer_must_be_https_unless_local(isolated_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValidationError, match="https"):
        Settings(oidc_issuer="http://idp.example")
    assert Settings(oidc_issuer="https://idp.example").oidc_issuer == "https://idp.example"
    with pytest.raises(ValidationError, match="viewer, uploader or admin"):
        Settings(oidc_auto_create_role="root")


HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # a browser navigating


def test_a_browser_that_fails_to_sign_in_lands_on_the_sign_in_page(
    client: TestClient, provider: Provider
) -> None:
    """Issue 20.12: a person whose SSO sign-in fails sees the console's sign-in page with
    the reason (?sso_error=<code>), never a JSON body; an API client still gets the JSON."""
    make_tenant("alice")  # no user "sam" there
    callback = start(client)
    refused = client.get(callback, headers=HTML, follow_redirects=False)
    assert refused.status_code == 302
    assert refused.headers["location"] == "/?sso_error=sso_user_unknown#/"
    assert "covidct_session" not in client.cookies
    url = urlsplit(start(client))
    forged = client.get(f"{url.path}?code=x&state=guessed", headers=HTML, follow_redirects=False)
    assert forged.headers["location"] == "/?sso_error=sso_state_mismatch#/"
    # The user pressed "cancel" at the provider (RFC 6749 4.1.2.1).
    denied = client.get(
        f"{url.path}?error=access_denied&state=x", headers=HTML, follow_redirects=False
    )
    assert denied.headers["location"] == "/?sso_error=sso_denied#/"
    api = client.get(f"{url.path}?error=access_denied&state=x", follow_redirects=False)
    assert api.status_code == 401 and api.json()["code"] == "sso_denied"


def test_a_browser_is_sent_back_when_the_provider_is_down(
    isolated_settings: Callable[..., Settings], started: list[str]
) -> None:
    isolated_settings(
        broker_url="redis://127.0.0.1:1/0", oidc_issuer="http://127.0.0.1:9",  # nothing there
        oidc_client_id="covidct", oidc_client_secret="s", oidc_tenant="alice",
    )  # fmt: skip
    with TestClient(create_app()) as client:
        down = client.get("/v1/session/sso", headers=HTML, follow_redirects=False)
        assert down.status_code == 302
        assert down.headers["location"] == "/?sso_error=sso_unavailable#/"
        assert client.get("/v1/session/sso").json()["code"] == "sso_unavailable"
