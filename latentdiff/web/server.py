"""HTTP routes of the web app (``http.server``; one thread per connection, one worker for the model).

    GET  /                          the page (static/index.html, app.js, app.css); /?token=… keeps the token
    GET  /api/info                  model name, defaults, samplers, limits, which panels work
    POST /api/jobs                  a request (JSON, see tasks.py) → 202 {"id"} or 400 {"error"}
    GET  /api/jobs/<id>             {"state", "position", "done", "total", "error", "images": [...]}
    POST /api/jobs/<id>/cancel      stop it (at the next step when running)
    GET  /api/images/<id>/<k>.png   image k of a job: the PNG with its provenance chunk

Every request passes :class:`~latentdiff.web.security.Guard` first: its ``Host`` always, and for the API
its ``Origin``, ``Sec-Fetch-Site`` and the token when one is needed (see :mod:`latentdiff.web.security` for
what this protects against and what it does not). ``POST`` bodies must be ``application/json`` with a valid
``Content-Length`` of at most ``MAX_BODY`` bytes, checked before a byte is read, and arrive within
``BODY_TIMEOUT`` seconds; a read that waits ``READ_TIMEOUT`` seconds ends the connection. Every failure,
the standard library's own (a malformed request line, an unknown method) included, is a JSON
``{"error": message}`` the page shows; the server keeps serving.
"""
from __future__ import annotations

import json
import mimetypes
import re
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from latentdiff.errors import UserError
from latentdiff.limits import WEB_LIMITS, Limits
from latentdiff.web.jobs import JobQueue
from latentdiff.web.security import Guard, Refusal
from latentdiff.web.tasks import UNAVAILABLE, layout_support, plan

STATIC = Path(__file__).parent / "static"
MAX_BODY = 48 * 2**20  # bytes of one request (uploads are base64 inside JSON)
READ_TIMEOUT = 30.0  # seconds one read (or write) on a connection may wait
BODY_TIMEOUT = 120.0  # seconds the whole body of a request may take
METHODS = "GET, POST"
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Content-Security-Policy": "frame-ancestors 'none'", "Referrer-Policy": "no-referrer"}


class App:
    """The model, its queue and the limits, shared by the request handlers. ``inpaint_pipe`` (a dedicated
    inpainting model, e.g. the shipped one next to the default model) runs the Inpaint panel; without one
    the served model inpaints (a text-to-image model by blending)."""

    def __init__(self, pipe, limits: Limits | None = None, max_waiting: int = 16, inpaint_pipe=None):
        self.pipe, self.limits = pipe, limits or WEB_LIMITS
        self.inpaint_pipe = pipe if inpaint_pipe is None else inpaint_pipe
        for p in (self.pipe, self.inpaint_pipe):
            p.limits = self.limits  # the library checks them again when a job runs
        self.queue = JobQueue(pipe, max_waiting=max_waiting)

    def info(self) -> dict:
        from latentdiff.config import SAMPLERS

        size = self.pipe.native_size  # the defaults as they are, even beyond the limits (the page shows both)
        features = layout_support(self.pipe)
        return {"model": self.pipe.name, "defaults": {**self.pipe.defaults, "height": size, "width": size},
                "samplers": list(SAMPLERS), "limits": self.limits.describe(), "features": features,
                "unavailable": {k: UNAVAILABLE[k] for k, ok in features.items() if not ok},
                "max_boxes": getattr(self.pipe, "layout_slots", 0), "vae_factor": self.pipe.vae_scale_factor,
                "layout_scale": getattr(self.pipe, "layout_scale", 1.0),
                "region_guidance": getattr(self.pipe, "region_guidance", None),
                "inpaint_model": self.inpaint_pipe.name, "inpaint_dedicated": self.inpaint_pipe.is_inpainting}

    def submit(self, request) -> dict:
        kind = request.get("kind") if isinstance(request, dict) else None
        pipe = self.inpaint_pipe if kind == "inpaint" else self.pipe
        p = plan(pipe, request, self.limits)
        job = self.queue.submit(p.kind, lambda job: p.run(pipe), p.total, unet=pipe.unet, vae=pipe.vae)
        return {"id": job.id}

    def status(self, job) -> dict:
        images = [{"url": f"/api/images/{job.id}/{k}.png", "record": json.loads(r),
                   "filename": f"latentdiff_{job.kind}_{json.loads(r)['seed']}.png"}
                  for k, r in enumerate(job.records)]
        return {"id": job.id, "kind": job.kind, "state": job.state, "position": self.queue.position(job),
                "done": job.done, "total": job.total, "error": job.error, "images": images}


class BodyError(Exception):
    """A request body that cannot be read: its status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    app: App  # set on the subclass made by make_server, with guard and the timeouts
    guard: Guard
    timeout = READ_TIMEOUT  # StreamRequestHandler sets it on the socket: every read and write
    body_timeout = BODY_TIMEOUT
    server_version = "latentdiff"

    def log_message(self, format, *args):  # quiet: the page polls several times a second
        pass

    # --- replies ---

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in {**SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self._json(status, {"error": message}, headers)

    def send_error(self, code, message=None, explain=None):
        """The standard library's own errors (a malformed request line, headers too long, an unknown
        method) as JSON, like every other reply."""
        self.close_connection = True
        short = self.responses.get(code, ("error",))[0]
        text = f"{short}: {message}" if message and message != short else short
        if self.request_version == "HTTP/0.9":  # no headers can be sent
            self.request_version = "HTTP/1.0"
        self._error(code, text)

    def _refuse(self, refusal: Refusal | None) -> bool:
        """Answer ``refusal`` (when there is one) and say whether the request was refused."""
        if refusal is None:
            return False
        self._error(refusal.status, refusal.message)
        return True

    # --- routes ---

    def do_GET(self):
        self._safely(self._get)

    def do_POST(self):
        self._safely(self._post)

    def _safely(self, route) -> None:
        """Run a route; a bug in it is a 500 JSON reply (and a traceback in the log), not a dropped connection."""
        try:
            route()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # pragma: no cover - a bug; the server keeps serving
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            try:
                self._error(500, f"internal error: {type(exc).__name__}: {exc}")
            except OSError:
                pass

    def _get(self):
        if self._refuse(self.guard.check_host(self.headers)):
            return
        path = self.path.split("?", 1)[0]
        if path.startswith("/api/") and self._refuse(self.guard.check_api(self.headers)):
            return
        if path in ("/", "/index.html"):
            return self._page(path)
        if path.startswith("/static/"):
            return self._static(path.removeprefix("/static/"))
        if path == "/api/info":
            return self._json(200, self.app.info())
        if m := re.fullmatch(r"/api/jobs/([\w-]+)", path):
            job = self.app.queue.get(m.group(1))
            return self._json(200, self.app.status(job)) if job else self._error(404, "no such request")
        if m := re.fullmatch(r"/api/images/([\w-]+)/(\d{1,6})\.png", path):
            job = self.app.queue.get(m.group(1))
            k = int(m.group(2))
            if job is None or k >= len(job.pngs):
                return self._error(404, "no such image")
            return self._send(200, job.pngs[k], "image/png")
        self._error(404, f"no such page: {path[:200]}")

    def _post(self):
        if self._refuse(self.guard.check_host(self.headers)):
            return
        path = self.path.split("?", 1)[0]
        if not path.startswith("/api/"):
            return self._error(404, f"no such endpoint: {path[:200]}")
        if self._refuse(self.guard.check_api(self.headers)):
            return
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return self._error(415, f"the API takes JSON bodies sent with Content-Type: application/json "
                                    f"(got {ctype or 'none'!r})")
        try:
            body = self._read_body()
        except BodyError as exc:
            return self._error(exc.status, str(exc))
        if m := re.fullmatch(r"/api/jobs/([\w-]+)/cancel", path):
            job = self.app.queue.get(m.group(1))
            if job is None:
                return self._error(404, "no such request")
            self.app.queue.cancel(job)
            return self._json(200, self.app.status(job))
        if path != "/api/jobs":
            return self._error(404, f"no such endpoint: {path[:200]}")
        try:
            request = json.loads(body or b"null")
        except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, 5000-digit numbers, deep nesting
            return self._error(400, "the request is not valid JSON")
        try:
            return self._json(202, self.app.submit(request))
        except UserError as exc:
            return self._error(400, str(exc))

    def _not_allowed(self):
        self.close_connection = True
        self._error(405, f"method {self.command} is not allowed; this server answers {METHODS}", {"Allow": METHODS})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = do_HEAD = _not_allowed

    # --- helpers ---

    def _read_body(self) -> bytes:
        """The body, from a validated Content-Length (digits only, at most ``MAX_BODY``), read within
        ``body_timeout`` seconds; a :class:`BodyError` otherwise."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise BodyError(411, "send the body with a Content-Length (Transfer-Encoding is not supported)")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise BodyError(411, "the request needs a Content-Length header")
        text = values[0].strip()
        if len(values) > 1 or not re.fullmatch(r"[0-9]{1,15}", text):
            shown = ", ".join(repr(v[:20]) for v in values)
            raise BodyError(400, f"Content-Length {shown}: expected one whole number of bytes")
        length = int(text)
        if length > MAX_BODY:
            raise BodyError(413, f"the request is {length / 2**20:.0f} MiB; uploads may total {MAX_BODY // 2**20} MiB")
        deadline = time.monotonic() + self.body_timeout
        chunks, left = [], length
        try:
            while left:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = self.rfile.read1(min(left, 2**20))
                if not chunk:
                    raise BodyError(400, f"the body ended after {length - left} of its {length} bytes")
                chunks.append(chunk)
                left -= len(chunk)
        except TimeoutError:
            raise BodyError(408, f"the body did not arrive in time ({length - left} of {length} bytes)") from None
        return b"".join(chunks)

    def _page(self, path: str) -> None:
        """The page; ``/?token=…`` with the right token keeps it in a cookie and reloads without it."""
        given = self.guard.query_token(self.path)
        if given is None or self.guard.token is None:
            return self._static("index.html")
        if not self.guard.matches(given):
            return self._error(403, "wrong token: use the URL the server printed when it started")
        self._send(303, b"", "text/plain", {"Location": path, "Set-Cookie": self.guard.set_cookie()})

    def _static(self, name: str) -> None:
        path = (STATIC / name).resolve()
        if STATIC.resolve() not in path.parents or not path.is_file():
            return self._error(404, f"no such file: {name[:200]}")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._send(200, path.read_bytes(), ctype)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that hung up or stalled is not worth a traceback in the log; anything else is."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def make_server(pipe, host: str = "127.0.0.1", port: int = 7860, limits: Limits | None = None,
                max_waiting: int = 16, inpaint_pipe=None, *, auth: str = "auto", token: str | None = None,
                allow_hosts=(), allow_origins=(), read_timeout: float = READ_TIMEOUT,
                body_timeout: float = BODY_TIMEOUT) -> ThreadingHTTPServer:
    """A server for ``pipe`` (and ``inpaint_pipe`` for the Inpaint panel, see :class:`App`) bound to
    ``host:port`` (port 0: any free port); call ``serve_forever()``. The :class:`App` is ``server.app``, the
    :class:`~latentdiff.web.security.Guard` ``server.guard``. ``auth``: on | off | auto (auto: the token is
    needed when bound beyond loopback; ``token`` gives its value, else a new one); ``allow_hosts`` /
    ``allow_origins``: further names in ``Host`` and origins the API accepts."""
    app = App(pipe, limits, max_waiting, inpaint_pipe)
    server = Server((host, port), Handler)  # bound first: the guard needs the real port
    try:
        guard = Guard.for_server(host, server.server_address[1], auth, token, allow_hosts, allow_origins)
    except UserError:
        server.server_close()
        raise
    server.RequestHandlerClass = type("BoundHandler", (Handler,), {"app": app, "guard": guard, "timeout": read_timeout,
                                                                  "body_timeout": body_timeout})
    server.daemon_threads = True
    server.app, server.guard = app, guard
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Run ``server`` in a daemon thread (tests, scripts); stop with ``server.shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, name="latentdiff-http", daemon=True)
    thread.start()
    return thread


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}/"


def page_url(server: ThreadingHTTPServer) -> str:
    """The URL to open: :func:`url_of`, with ``?token=…`` when the server needs its token."""
    token = server.guard.token
    return url_of(server) + (f"?token={token}" if token else "")
