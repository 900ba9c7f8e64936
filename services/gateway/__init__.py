"""FastAPI gateway: the /v1 REST API, auth, errors, health; composed with the upload room
by :mod:`services.asgi`."""
