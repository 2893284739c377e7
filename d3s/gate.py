"""The app's front door: one ASGI middleware that every HTTP request meets before any of Gradio's routes.

Gradio's own rules (its CORS answer, its login form, its upload route) are written for a trusted network; a
public Space needs three more, checked here on the raw request so that no route, queued or not, goes around them:

- a request whose ``Origin`` is a page elsewhere is refused, preflights included, so a page a signed-in reviewer
  visits cannot act with their cookies (:func:`d3s.hosting.allowed_origin`);
- sign-in attempts are limited per address (per name: :func:`d3s.hosting.password_check`), uploads have a
  budget per address (:class:`d3s.hosting.UploadBudget`);
- Gradio's own 400 answers (a malformed value, a file reference outside its cache) are replaced by one fixed
  sentence: their text can name the app's working folder.

The address is :func:`d3s.hosting.client_address`'s (the hop the Space's proxy added, never one the client wrote).
The rules about jobs (bounds, admission) live in the events' validators and handlers (:mod:`d3s.handlers`).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from .hosting import Refused, UploadBudget, allowed_origin, client_address, sign_in_limit

FOREIGN_ORIGIN = "Requests from other sites are not accepted; open the app itself."
BAD_REQUEST = "This request could not be read; use the app's page or its documented API."
NO_LENGTH = "Uploads must state their size (Content-Length)."


class Gate:
    """ASGI middleware around the whole app (see the module's doc).

    Args:
        app: the ASGI app it guards (Gradio's server app, as uvicorn loaded it).
        proxy_hops (`int`): trusted proxies in front of the app (a Space: 1); see :func:`client_address`.
        space_host (`str`, *optional*): the Space's own host name (``SPACE_HOST``), an allowed origin besides the
            request's ``Host``.
        uploads (:class:`UploadBudget`, *optional*): per-address upload budget (default: 20 files, 100 MB an hour).
        sign_in: per-address limit on sign-in attempts (default: ``d3s.hosting.sign_in_limit("address")``).
    """

    def __init__(self, app, proxy_hops: int = 0, space_host: str | None = None, uploads: UploadBudget | None = None,
                 sign_in=None):
        self.app, self.proxy_hops, self.space_host = app, proxy_hops, space_host
        self.uploads = uploads or UploadBudget()
        self.sign_in = sign_in or sign_in_limit("address")

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if origin is not None and not allowed_origin(origin, headers.get("host"), self.space_host):
            await _refuse(scope, send, 403, FOREIGN_ORIGIN)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", "GET"), scope.get("path", "").rstrip("/")
        client = client_address(SimpleNamespace(headers=headers, client=SimpleNamespace(
            host=(scope.get("client") or ("?",))[0])), self.proxy_hops)
        try:
            if method == "POST" and path.endswith("/login"):
                self.sign_in.hit(f"address:{client}")
            if method == "POST" and path.endswith("/gradio_api/upload"):
                length = headers.get("content-length", "")
                if not length.isdigit():
                    await _refuse(scope, send, 411, NO_LENGTH)
                    return
                self.uploads.charge(client, int(length))
        except Refused as err:
            await _refuse(scope, send, 429, str(err))
            return
        await self.app(scope, receive, _fixed_bad_requests(send) if "/gradio_api/" in path + "/" else send)


def _fixed_bad_requests(send):
    """``send`` with each 400 answer's body replaced by :data:`BAD_REQUEST`."""
    state = {"replaced": False}

    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] == 400:
            state["replaced"] = True
            await _send_json(send, 400, BAD_REQUEST)
            return
        if state["replaced"]:
            return  # the original body goes nowhere
        await send(message)

    return wrapped


async def _refuse(scope, send, status: int, sentence: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await _send_json(send, status, sentence)


async def _send_json(send, status: int, sentence: str) -> None:
    """One whole answer: ``{"detail": sentence}`` with ``status``."""
    body = json.dumps({"detail": sentence}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def install(demo, gate_kwargs: dict) -> Gate:
    """Put a :class:`Gate` in front of a launched app (``demo.launch(prevent_thread_lock=True)``): the server's
    loaded ASGI app is replaced, so every connection opened from now on meets the gate first (uvicorn reads it per
    connection). Fails loudly rather than serve without it."""
    config = getattr(getattr(demo, "server", None), "config", None)
    if config is None or not hasattr(config, "loaded_app"):
        raise RuntimeError("d3s app: the server was not started by Gradio's launch; the gate cannot be installed.")
    gate = Gate(config.loaded_app, **gate_kwargs)
    config.loaded_app = gate
    return gate
