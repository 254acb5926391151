"""HTTP routes of the web app (``http.server``; one thread per connection, one worker for the model).

    GET  /                          the page (static/index.html, app.js, app.css)
    GET  /api/info                  model name, defaults, samplers, limits, which panels work
    POST /api/jobs                  a request (JSON, see tasks.py) → 202 {"id"} or 400 {"error"}
    GET  /api/jobs/<id>             {"state", "position", "done", "total", "error", "images": [...]}
    POST /api/jobs/<id>/cancel      stop it (at the next step when running)
    GET  /api/images/<id>/<k>.png   image k of a job: the PNG with its provenance chunk

Bodies above ``MAX_BODY`` bytes are refused before they are read. Every failure is a JSON
``{"error": message}`` the page shows; the server keeps serving.
"""
from __future__ import annotations

import json
import mimetypes
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from latentdiff.errors import UserError
from latentdiff.web.jobs import JobQueue
from latentdiff.web.tasks import UNAVAILABLE, Limits, layout_support, plan

STATIC = Path(__file__).parent / "static"
MAX_BODY = 48 * 2**20  # bytes of one request (uploads are base64 inside JSON)


class App:
    """The model, its queue and the limits, shared by the request handlers. ``inpaint_pipe`` (a dedicated
    inpainting model, e.g. the shipped one next to the default model) runs the Inpaint panel; without one
    the served model inpaints (a text-to-image model by blending)."""

    def __init__(self, pipe, limits: Limits | None = None, max_waiting: int = 16, inpaint_pipe=None):
        self.pipe, self.limits = pipe, limits or Limits()
        self.inpaint_pipe = pipe if inpaint_pipe is None else inpaint_pipe
        self.queue = JobQueue(pipe, max_waiting=max_waiting)

    def info(self) -> dict:
        from latentdiff.diffusion.sampling import SAMPLERS

        size = self.pipe.resolve()
        features = layout_support(self.pipe)
        return {"model": self.pipe.name, "defaults": {**self.pipe.defaults, "height": size["height"],
                                                      "width": size["width"]},
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
        job = self.queue.submit(p.kind, lambda job: p.run(pipe), p.total, unet=pipe.unet)
        return {"id": job.id}

    def status(self, job) -> dict:
        images = [{"url": f"/api/images/{job.id}/{k}.png", "record": json.loads(r),
                   "filename": f"latentdiff_{job.kind}_{json.loads(r)['seed']}.png"}
                  for k, r in enumerate(job.records)]
        return {"id": job.id, "kind": job.kind, "state": job.state, "position": self.queue.position(job),
                "done": job.done, "total": job.total, "error": job.error, "images": images}


class Handler(BaseHTTPRequestHandler):
    app: App  # set on the subclass made by make_server
    server_version = "latentdiff"

    def log_message(self, format, *args):  # quiet: the page polls several times a second
        pass

    # --- replies ---

    def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # --- routes ---

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self._static("index.html")
        if path.startswith("/static/"):
            return self._static(path.removeprefix("/static/"))
        if path == "/api/info":
            return self._json(200, self.app.info())
        if m := re.fullmatch(r"/api/jobs/([\w-]+)", path):
            job = self.app.queue.get(m.group(1))
            return self._json(200, self.app.status(job)) if job else self._error(404, "no such request")
        if m := re.fullmatch(r"/api/images/([\w-]+)/(\d+)\.png", path):
            job = self.app.queue.get(m.group(1))
            k = int(m.group(2))
            if job is None or k >= len(job.pngs):
                return self._error(404, "no such image")
            return self._send(200, job.pngs[k], "image/png")
        self._error(404, f"no such page: {path}")

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if m := re.fullmatch(r"/api/jobs/([\w-]+)/cancel", path):
            job = self.app.queue.get(m.group(1))
            if job is None:
                return self._error(404, "no such request")
            self.app.queue.cancel(job)
            return self._json(200, self.app.status(job))
        if path != "/api/jobs":
            return self._error(404, f"no such endpoint: {path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            return self._error(413, f"the request is {length / 2**20:.0f} MiB; uploads may total "
                                    f"{MAX_BODY // 2**20} MiB")
        try:
            request = json.loads(self.rfile.read(length) or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "the request is not valid JSON")
        try:
            return self._json(202, self.app.submit(request))
        except UserError as exc:
            return self._error(400, str(exc))

    def _static(self, name: str) -> None:
        path = (STATIC / name).resolve()
        if STATIC.resolve() not in path.parents or not path.is_file():
            return self._error(404, f"no such file: {name}")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._send(200, path.read_bytes(), ctype)


def make_server(pipe, host: str = "127.0.0.1", port: int = 7860, limits: Limits | None = None,
                max_waiting: int = 16, inpaint_pipe=None) -> ThreadingHTTPServer:
    """A server for ``pipe`` (and ``inpaint_pipe`` for the Inpaint panel, see :class:`App`) bound to
    ``host:port`` (port 0: any free port); call ``serve_forever()``. The :class:`App` is ``server.app``."""
    app = App(pipe, limits, max_waiting, inpaint_pipe)
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.app = app
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Run ``server`` in a daemon thread (tests, scripts); stop with ``server.shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, name="latentdiff-http", daemon=True)
    thread.start()
    return thread


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{port}/"
