"""Attack tests (issue #31): the probes of an attacker and of a careless user, one test each, read as a list.

The web app (a server started here on 127.0.0.1, the tiny model):
  1. any web page could use the local server:
     - a text/plain cross-origin POST queued a job ............ test_1_cross_origin_text_plain_post_queues_nothing
     - a body without Content-Type: application/json ........... test_1_a_body_that_is_not_json_typed_is_refused
     - Host was not checked (DNS rebinding) .................... test_1_a_foreign_host_header_reads_nothing
     - no token when bound beyond loopback ..... test_1_the_token_is_required_beyond_loopback_by_default,
                                                                 test_1_serve_refuses_token_off_beyond_loopback
     - --allow-origin opens the API to that origin alone ....... test_1_an_allowed_origin_may_use_the_api_and_no_other
     - the Origin / Host / Sec-Fetch-Site matrix ............... test_origin_host_matrix
     - the token matrix, and the URL that sets its cookie ...... test_token_matrix,
                                                                 test_token_url_sets_a_cookie_for_the_page
  2. the request-size cap could be bypassed:
     - Content-Length: -1 read to the end of the stream ........ test_2_a_negative_content_length_is_refused_at_once
     - Content-Length: abc crashed the handler ................. test_2_a_malformed_content_length_is_a_json_400
     - a body that never arrives, or trickles, holds a thread .. test_2_a_stalled_body_times_out,
                                                                 test_2_a_trickling_body_times_out_in_total
     - JSON nested 100,000 deep, 5000-digit numbers ............ test_2_deeply_nested_or_huge_json_is_a_400
  7. PUT and other methods answered with the standard library's HTML ... test_7_unsupported_methods_answer_json,
                                                                 test_7_unknown_methods_and_garbage_answer_json
Replay, the CLI, inpainting (in process, the tiny model; a refused request never reaches sampling):
  3. a crafted PNG record exhausted memory .................... test_3_a_crafted_record_is_refused_before_any_work
     (and raised limits let a big record replay) .............. test_3_a_record_within_raised_limits_replays
  4. the CLI had no upper bounds .............................. test_4_cli_sizes_and_counts_are_bounded,
                                                                 test_4_the_python_api_and_the_web_app_share_the_bounds
  5. a non-UTF-8 prompt ended in a tokenizer traceback ........ test_5_a_non_utf8_prompt_is_one_line_exit_2,
                                                                 test_5_prompts_are_text_in_every_front_end
                                                                 (slow: test_5_real_non_utf8_bytes_on_the_command_line)
  6. inpainting with a mask that selects nothing exited 0 ..... test_6_a_mask_that_selects_nothing_is_refused,
                                                                 test_6_the_web_app_refuses_an_empty_mask_too
and Ctrl-C between steps (test_ctrl_c_stops_generation_within_a_step). The fuzz test of replay's record parser
is tests/test_record_fuzz.py; a cross-origin page in a real browser is in tests/test_webapp_browser.py.
"""
import http.client
import json
import re
import resource
import signal
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from latentdiff.cli import main
from latentdiff.web.server import make_server, serve_in_thread
from latentdiff.web.tasks import Limits

TIMEOUT = 10  # seconds any probe may wait for an answer
JOB = json.dumps({"kind": "txt2img", "prompt": "x", "num_images": 1, "steps": 2}).encode()


def _start(pipe, **kw):
    srv = make_server(pipe, "127.0.0.1", 0, Limits(max_steps=1000, max_images=4, max_side=256),
                      read_timeout=2.0, body_timeout=3.0, **kw)
    serve_in_thread(srv)
    return srv


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from latentdiff.pipeline import Pipeline

    return Pipeline.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """The web app; its own pipeline, so its worker never shares one with a test's direct calls."""
    from latentdiff.pipeline import Pipeline

    srv = _start(Pipeline.load(tiny_model_dir, device="cpu"))
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def token_server(server):
    srv = _start(server.app.pipe, auth="on", token="t0ken-for-the-tests-only-0123456789")
    yield srv
    srv.shutdown()
    srv.server_close()


def port(server) -> int:
    return server.server_address[1]


def own(server) -> str:
    return f"127.0.0.1:{port(server)}"


def send(server, method, path, headers=(), body=None, host="own"):
    """(status, headers, body) of one request with exactly the headers given (a list of pairs, so one may
    repeat); ``host`` None sends no Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", port(server), timeout=TIMEOUT)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", own(server) if host == "own" else host)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def post_job(server, headers=(), body=JOB, host="own"):
    return send(server, "POST", "/api/jobs", [*headers, ("Content-Length", str(len(body)))], body, host)


def error_of(data: bytes) -> str:
    message = json.loads(data)["error"]
    assert "\n" not in message
    return message


def jobs(server) -> int:
    return len(server.app.queue.jobs)


def json_type(*more):
    return [("Content-Type", "application/json"), *more]


# --- 1. other web pages, other hosts, other machines --------------------------------------------------

def test_1_cross_origin_text_plain_post_queues_nothing(server):
    """The issue's curl: a cross-origin page's simple POST (text/plain, no preflight)."""
    before = jobs(server)
    status, _, data = post_job(server, [("Content-Type", "text/plain"), ("Origin", "http://evil.example")])
    assert status == 403 and "only this server's own page" in error_of(data)
    status, _, data = post_job(server, json_type(("Origin", "http://evil.example")))  # JSON typed: still not
    assert status == 403
    assert jobs(server) == before


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/jsonp", "text/json"])
def test_1_a_body_that_is_not_json_typed_is_refused(server, ctype):
    before = jobs(server)
    status, _, data = post_job(server, [("Content-Type", ctype)] if ctype else [])
    assert status == 415 and "Content-Type: application/json" in error_of(data)
    assert jobs(server) == before


def test_1_a_foreign_host_header_reads_nothing(server):
    """DNS rebinding: the page's name resolves to 127.0.0.1, so the browser sends its own name as Host."""
    _, _, data = post_job(server, json_type())
    job = json.loads(data)["id"]
    for path in ("/api/info", f"/api/jobs/{job}", f"/api/images/{job}/0.png", "/"):
        for host in ("evil.example", f"evil.example:{port(server)}", f"127.0.0.1.evil.example:{port(server)}"):
            status, _, data = send(server, "GET", path, host=host)
            assert status == 403 and "DNS rebinding" in error_of(data), (path, host)


def test_1_the_token_is_required_beyond_loopback_by_default():
    from latentdiff.web.security import Guard, token_required

    for host in ("0.0.0.0", "", "::", "192.168.1.20", "10.0.0.1", "myhost.example"):
        assert token_required(host) and Guard.for_server(host, 7860).token, host
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert not token_required(host) and Guard.for_server(host, 7860).token is None, host
        assert Guard.for_server(host, 7860, auth="on").token  # on loopback too, when asked
    a, b = (Guard.for_server("0.0.0.0", 7860).token for _ in range(2))
    assert a != b and len(a) >= 40  # a new random token each launch
    lan = Guard.for_server("192.168.1.20", 7860)  # Host: the addresses it serves, never a foreign name
    ok = [("Host", h) for h in ("192.168.1.20:7860", "127.0.0.1:7860", "localhost:7860")]
    bad = [("Host", h) for h in ("192.168.1.21:7860", "evil.example:7860")]
    assert [lan.check_host(_headers([h])) for h in ok] == [None] * 3
    assert [lan.check_host(_headers([h])).status for h in bad] == [403, 403]
    assert Guard.for_server("0.0.0.0", 7860).check_host(_headers([("Host", "10.9.8.7:7860")])) is None


def test_1_an_allowed_origin_may_use_the_api_and_no_other():
    from latentdiff.web.security import Guard

    guard = Guard.for_server("127.0.0.1", 7860, allow_origins=["http://localhost:3000"])
    host = ("Host", "127.0.0.1:7860")
    allowed = [host, ("Origin", "http://localhost:3000"), ("Sec-Fetch-Site", "same-site")]
    assert guard.check_api(_headers(allowed)) is None
    for origin in ("http://localhost:3001", "https://localhost:3000", "http://localhost:3000.evil.example"):
        assert guard.check_api(_headers([host, ("Origin", origin), ("Sec-Fetch-Site", "same-site")])).status == 403


def _headers(pairs):
    from email.message import Message

    m = Message()
    for k, v in pairs:
        m[k] = v
    return m


def test_1_serve_refuses_token_off_beyond_loopback(capsys):
    assert main(["serve", "--host", "0.0.0.0", "--token", "off", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--token off: refused with --host 0.0.0.0" in err
    assert main(["serve", "--token", "secret", "--port", "0"]) == 2
    assert "--token 'secret': expected one of auto, on, off" in capsys.readouterr().err
    assert main(["serve", "--allow-origin", "evil.example", "--port", "0"]) == 2
    assert "--allow-origin 'evil.example': expected scheme://host[:port]" in capsys.readouterr().err


# The matrix: who may read and write, on the loopback server without a token. (name, method, path, headers,
# host, expected status); "JOB" and "IMG" stand for a real job's record and first image.
MATRIX = [
    ("own page reads", "GET", "/api/info", [], "own", 200),
    ("localhost name", "GET", "/api/info", [], "localhost:{port}", 200),
    ("IPv6 loopback", "GET", "/api/info", [], "[::1]:{port}", 200),
    ("another loopback address", "GET", "/api/info", [], "127.0.0.2:{port}", 200),
    ("an address it does not serve", "GET", "/api/info", [], "10.1.2.3:{port}", 403),
    ("same origin, Sec-Fetch-Site same-origin", "GET", "JOB", [("Sec-Fetch-Site", "same-origin")], "own", 200),
    ("typed URL, Sec-Fetch-Site none", "GET", "IMG", [("Sec-Fetch-Site", "none")], "own", 200),
    ("own Origin posts", "POST", "/api/jobs", [("Origin", "http://{own}")], "own", 202),
    ("no Host header", "GET", "/api/info", [], None, 400),
    ("two Host headers", "GET", "/api/info", [("Host", "evil.example")], "own", 400),
    ("rebinding name", "GET", "/api/info", [], "attacker.example:{port}", 403),
    ("rebinding name reads a job", "GET", "JOB", [], "attacker.example", 403),
    ("rebinding name posts", "POST", "/api/jobs", [], "attacker.example:{port}", 403),
    ("foreign Origin reads", "GET", "/api/info", [("Origin", "http://evil.example")], "own", 403),
    ("foreign Origin reads a job", "GET", "JOB", [("Origin", "http://evil.example")], "own", 403),
    ("another port's page", "POST", "/api/jobs", [("Origin", "http://127.0.0.1:1")], "own", 403),
    ("localhost page, 127.0.0.1 server", "POST", "/api/jobs", [("Origin", "http://localhost:{port}")], "own", 403),
    ("sandboxed page, Origin null", "POST", "/api/jobs", [("Origin", "null")], "own", 403),
    ("<img> on another site", "GET", "IMG", [("Sec-Fetch-Site", "cross-site")], "own", 403),
    ("<img> on another port", "GET", "IMG", [("Sec-Fetch-Site", "same-site")], "own", 403),
    ("cross-site fetch", "GET", "/api/info", [("Sec-Fetch-Site", "cross-site")], "own", 403),
    ("the page itself from a link elsewhere", "GET", "/", [("Sec-Fetch-Site", "cross-site")], "own", 200),
]


@pytest.fixture(scope="module")
def finished_job(server):
    _, _, data = post_job(server, json_type())
    job = json.loads(data)["id"]
    deadline = time.time() + 60
    while server.app.queue.get(job).state != "done" and time.time() < deadline:
        time.sleep(0.05)
    assert server.app.queue.get(job).state == "done"
    return job


@pytest.mark.parametrize("name, method, path, headers, host, status", MATRIX, ids=[m[0] for m in MATRIX])
def test_origin_host_matrix(server, finished_job, name, method, path, headers, host, status):
    fill = {"port": port(server), "own": own(server)}
    path = {"JOB": f"/api/jobs/{finished_job}", "IMG": f"/api/images/{finished_job}/0.png"}.get(path, path)
    headers = [(k, v.format(**fill)) for k, v in headers]
    if method == "POST":
        headers = [*json_type(*headers), ("Content-Length", str(len(JOB)))]
    got, reply_headers, data = send(server, method, path, headers, JOB if method == "POST" else None,
                                    host if host in (None, "own") else host.format(**fill))
    assert got == status, data[:300]
    if status >= 400:
        assert reply_headers["content-type"] == "application/json" and error_of(data)
        assert "access-control-allow-origin" not in reply_headers


TOKEN = "t0ken-for-the-tests-only-0123456789"
TOKEN_MATRIX = [
    ("no token", [], 403),
    ("wrong bearer token", [("Authorization", "Bearer nope-nope-nope-nope")], 403),
    ("a prefix of the token", [("Authorization", f"Bearer {TOKEN[:-1]}")], 403),
    ("bearer token", [("Authorization", f"Bearer {TOKEN}")], 200),
    ("Jupyter-style 'token' scheme", [("Authorization", f"token {TOKEN}")], 200),
    ("cookie", [("Cookie", "other=1; latentdiff-token-{port}=" + TOKEN)], 200),
    ("another server's cookie", [("Cookie", f"latentdiff-token-1={TOKEN}")], 403),
    ("token but foreign Origin", [("Authorization", f"Bearer {TOKEN}"), ("Origin", "http://evil.example")], 403),
]


@pytest.mark.parametrize("name, headers, status", TOKEN_MATRIX, ids=[m[0] for m in TOKEN_MATRIX])
def test_token_matrix(token_server, name, headers, status):
    headers = [(k, v.format(port=port(token_server))) for k, v in headers]
    got, _, data = send(token_server, "GET", "/api/info", headers)
    assert got == status
    got, _, data = post_job(token_server, json_type(*headers))
    assert got == (202 if status == 200 else status)
    if status == 403 and name == "no token":
        assert "needs its token" in error_of(data) and "Authorization: Bearer" in error_of(data)


def test_token_url_sets_a_cookie_for_the_page(token_server):
    status, _, _ = send(token_server, "GET", "/")  # the page itself: nothing private in it
    assert status == 200
    status, headers, _ = send(token_server, "GET", f"/?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"latentdiff-token-{port(token_server)}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, data = send(token_server, "GET", "/?token=wrong")
    assert status == 403 and "wrong token" in error_of(data)
    status, _, data = send(token_server, "GET", "/api/info", [("Cookie", cookie.split(";")[0])])
    assert status == 200 and json.loads(data)["model"] == "tiny_model"


# --- 2. the request-size cap --------------------------------------------------------------------------

def _raw(server, head: bytes, then: bytes = b"", wait: float = TIMEOUT) -> tuple[bytes, float]:
    """Send raw bytes and keep the connection open; (the reply, seconds it took)."""
    with socket.create_connection(("127.0.0.1", port(server)), timeout=wait) as s:
        start = time.monotonic()
        s.sendall(head + then)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except TimeoutError:
            pass
        return reply, time.monotonic() - start


def _reply_json(reply: bytes) -> tuple[int, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), error_of(body)


def _post_head(server, *lines: str) -> bytes:
    return ("POST /api/jobs HTTP/1.1\r\n" f"Host: {own(server)}\r\nContent-Type: application/json\r\n"
            + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode()


def test_2_a_negative_content_length_is_refused_at_once(server):
    """-1 made the server read to the end of the stream (the client streamed 300 MiB into its memory)."""
    reply, took = _raw(server, _post_head(server, "Content-Length: -1"))  # and the connection stays open
    assert reply, "no answer: the server is still reading"
    status, message = _reply_json(reply)
    assert status == 400 and "Content-Length '-1'" in message and took < 5
    assert send(server, "GET", "/api/info")[0] == 200


@pytest.mark.parametrize("lines, status", [
    (["Content-Length: abc"], 400),
    (["Content-Length: +5"], 400),
    (["Content-Length: 5.0"], 400),
    (["Content-Length: 0x10"], 400),
    (["Content-Length: 1e3"], 400),
    (["Content-Length: " + "9" * 5000], 400),
    (["Content-Length: 5", "Content-Length: 6"], 400),
    (["Content-Length: 99999999999"], 413),
    (["Transfer-Encoding: chunked"], 411),
    ([], 411),
])
def test_2_a_malformed_content_length_is_a_json_400(server, lines, status):
    """'abc' was an uncaught ValueError: a traceback in the log, the connection dropped without an answer."""
    reply, took = _raw(server, _post_head(server, *lines))
    assert reply, "the connection was dropped without an answer"
    got, message = _reply_json(reply)
    assert got == status and took < 5, message
    assert send(server, "GET", "/api/info")[0] == 200


def test_2_a_stalled_body_times_out(server):
    """A client that announces 100 bytes and sends 10 is answered 408 after the read timeout (2 s here),
    instead of holding a thread for ever."""
    reply, took = _raw(server, _post_head(server, "Content-Length: 100"), b'{"kind": "t')
    status, message = _reply_json(reply)
    assert status == 408 and "did not arrive in time" in message and took < 8
    assert send(server, "GET", "/api/info")[0] == 200


def test_2_a_trickling_body_times_out_in_total(server):
    """One byte every second keeps each read under the read timeout; the whole body still has 3 s here."""
    with socket.create_connection(("127.0.0.1", port(server)), timeout=TIMEOUT) as s:
        s.sendall(_post_head(server, "Content-Length: 100"))
        start, reply = time.monotonic(), b""
        while time.monotonic() - start < 8 and not reply:
            try:
                s.sendall(b" ")
                s.settimeout(1.0)
                reply = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
    assert reply.startswith(b"HTTP/1.0 408") and time.monotonic() - start < 8


def test_2_deeply_nested_or_huge_json_is_a_400(server):
    for body in (b"[" * 100000, b"1" * 5000, b'{"kind": "txt2img", "seed": ' + b"9" * 5000 + b"}", b"\xff\xfe"):
        status, _, data = post_job(server, json_type(), body)
        assert status == 400 and "not valid JSON" in error_of(data)


# --- 7. methods -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_7_unsupported_methods_answer_json(server, method):
    status, headers, data = send(server, method, "/api/jobs", [("Content-Length", "0")])
    assert status == 405 and headers["content-type"] == "application/json" and headers["allow"] == "GET, POST"
    assert f"method {method} is not allowed" in error_of(data)


def test_7_unknown_methods_and_garbage_answer_json(server):
    status, headers, data = send(server, "BREW", "/api/jobs")
    assert status == 501 and headers["content-type"] == "application/json" and error_of(data)
    status, headers, data = send(server, "HEAD", "/api/info")
    assert status == 405 and data == b""  # no body to a HEAD
    reply, _ = _raw(server, b"GARBAGE\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 400") and _reply_json(reply)[0] == 400
    reply, _ = _raw(server, b"GET /" + b"a" * 65532)  # a request line past the standard library's 64 KiB
    assert b"414" in reply.split(b"\r\n")[0] and b"application/json" in reply


# --- 3. a crafted PNG record ---------------------------------------------------------------------------

@pytest.fixture
def never_sample(monkeypatch):
    """Sampling must not be reached by a refused request (and if it is, on the code before #31, fail at once
    instead of allocating gigabytes)."""
    from latentdiff.pipeline import Pipeline

    def refuse(self, rows, **kw):
        raise AssertionError(f"sampling was reached: {len(rows)} images of {kw.get('width')}x{kw.get('height')}")
    monkeypatch.setattr(Pipeline, "sample_rows", refuse)


@pytest.fixture(scope="module")
def record_png(pipe, tmp_path_factory):
    """A real record of the tiny model, to craft from."""
    from latentdiff.provenance import Record

    img = pipe.generate("a red circle", steps=2, sampler="ddim", seed=3)[0]
    path = tmp_path_factory.mktemp("record") / "made.png"
    img.save(path, pnginfo=_info(json.loads(img.info["latentdiff"])))
    assert Record.from_json(img.info["latentdiff"]).model_path
    return path


def _info(record: dict) -> PngInfo:
    info = PngInfo()
    info.add_text("latentdiff", json.dumps(record))
    return info


def craft(record_png, tmp_path, **changes) -> str:
    with Image.open(record_png) as img:
        record = {**json.loads(img.text["latentdiff"]), **changes}
        out = tmp_path / "crafted.png"
        img.save(out, pnginfo=_info(record))
    return str(out)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("changes, words", [
    ({"batch_size": 1_000_000}, "batch_size 1000000: above the limit of 128 images per call (--max-images)"),
    ({"height": 100_000}, "height 100000: above the limit of 2048 px per side (--max-side)"),
    ({"width": 100_000}, "width 100000: above the limit of 2048 px per side (--max-side)"),
    ({"steps": 10**9}, "steps 1000000000: above the limit of 1000 steps (--max-steps)"),
    ({"batch_size": 3, "batch_prompts": ["a"] * 3, "batch_index": 5}, "batch_index 5: expected 0..2"),
    ({"batch_seed": 2**63 - 1, "seed": 2**63 - 1, "batch_size": 2}, "batch_seed 9223372036854775807: expected"),
    ({"steps": "25"}, "steps '25': expected a whole number"),
    ({"prompt": "a \udcff red circle"}, "prompt: not valid UTF-8 text (byte 0xff at character 3)"),
])
def test_3_a_crafted_record_is_refused_before_any_work(record_png, tmp_path, capsys, never_sample, changes, words):
    """batch_size 1000000 grew memory ~270 MB/s and ignored Ctrl-C; height/width 100000 ran on after SIGINT."""
    crafted = craft(record_png, tmp_path, **changes)
    rss, start = _max_rss_mb(), time.monotonic()
    code, out, err = run(capsys, "replay", crafted, "--out", str(tmp_path / "o"), "--device", "cpu")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"latentdiff replay: error: {crafted}: the latentdiff record's ") and words in err, err
    assert time.monotonic() - start < 5 and _max_rss_mb() - rss < 100


def test_3_a_record_within_raised_limits_replays(record_png, tmp_path, capsys):
    """The limits are the CLI's: an image made with --max-side 4096 replays with it."""
    from latentdiff.pipeline import Pipeline

    crafted = craft(record_png, tmp_path, height=4096, width=32)
    code, _, err = run(capsys, "replay", crafted, "--out", str(tmp_path / "o"), "--max-side", "2048")
    assert code == 2 and "height 4096: above the limit of 2048 px" in err
    reached = []

    def stop_at_sampling(self, rows, **kw):
        reached.append(kw)
        raise KeyboardInterrupt  # as Ctrl-C would: the CLI exits 130
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Pipeline, "sample_rows", stop_at_sampling)
        code, _, _ = run(capsys, "replay", crafted, "--out", str(tmp_path / "o"), "--max-side", "4096")
    assert code == 130 and reached and reached[0]["height"] == 4096  # got to sampling: the limit was raised


# --- 4. the CLI's bounds --------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (["--height", "100000"], "--height 100000: above the limit of 2048 px per side (--max-side)"),
    (["--width", "100000"], "--width 100000: above the limit of 2048 px per side (--max-side)"),
    (["--num-images", "1000000"], "--num-images 1000000: above the limit of 128 images per call (--max-images)"),
    (["--steps", "5000"], "--steps 5000: above the limit of 1000 steps (--max-steps)"),
    (["--batch-size", "1000"], "--batch-size 1000: above the limit of 128 images per call (--max-images)"),
    (["--height", "64", "--max-side", "32"], "--height 64: above the limit of 32 px per side (--max-side)"),
    (["--height", "2048", "--width", "2048", "--num-images", "4", "--batch-size", "4"],
     "a batch of 4 image(s) of 2048x2048 is 1,048,576 latent pixels: above the limit of 262,144 per batch "
     "(--max-batch-pixels; --batch-size 1 fits)"),
    (["--max-side", "0"], "--max-side 0: must be at least 1"),
])
def test_4_cli_sizes_and_counts_are_bounded(tiny_model_dir, tmp_path, capsys, never_sample, flags, words):
    """`generate --height 100000` sat in native code; Ctrl-C took about 8 minutes."""
    start = time.monotonic()
    code, out, err = run(capsys, "generate", "a red circle", "--model", str(tiny_model_dir), "--out", str(tmp_path),
                         "--device", "cpu", *flags)
    assert code == 2 and out == "" and err.count("\n") == 1 and words in err, err
    assert time.monotonic() - start < 5


def test_4_the_python_api_and_the_web_app_share_the_bounds(pipe, server):
    from latentdiff.errors import UserError
    from latentdiff.limits import Limits as Shared

    assert Limits is Shared  # one definition for every front end
    assert pipe.limits == Shared()  # the library's defaults
    with pytest.raises(UserError, match=r"height 100000: above the limit of 2048 px per side"):
        pipe.generate("a red circle", steps=2, height=100_000)
    with pytest.raises(UserError, match=r"num_images 1000000: above the limit of 128 images per call"):
        pipe.generate("a red circle", steps=2, num_images=1_000_000)
    with pytest.raises(UserError, match=r"batch_size 200: above the limit of 128 images per call"):
        pipe.sample_rows([None] * 200, steps=2, guidance=1.0, sampler="ddim", height=32, width=32)
    status, _, data = post_job(server, json_type(), json.dumps({"kind": "txt2img", "height": 100_000}).encode())
    assert status == 400 and "height 100000: expected 1..256" in error_of(data)


# --- 5. prompts as text -----------------------------------------------------------------------------------

def test_5_a_non_utf8_prompt_is_one_line_exit_2(tiny_model_dir, tmp_path, capsys):
    """`latentdiff generate $'a red \\xff\\xfe circle'`: Python decodes the argument's bytes to lone surrogates,
    which the tokenizer met with a TypeError traceback and exit 1."""
    code, out, err = run(capsys, "generate", "a red \udcff\udcfe circle", "--model", str(tiny_model_dir),
                         "--out", str(tmp_path), "--steps", "1")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == ("latentdiff generate: error: prompt: not valid UTF-8 text (byte 0xff at character 7); pass the "
                   "text in UTF-8\n")
    code, _, err = run(capsys, "generate", "x", "--negative-prompt", "nul\x00", "--model", str(tiny_model_dir),
                       "--out", str(tmp_path), "--steps", "1")
    assert code == 2 and "--negative-prompt: control character U+0000 at character 4" in err


def test_5_prompts_are_text_in_every_front_end(pipe, server):
    from latentdiff.errors import UserError

    for bad, words in (("a \ud800 b", "lone surrogate U+D800 at character 3"), ("a\x1bb", "control character U+001B")):
        with pytest.raises(UserError, match=re.escape(words)):
            pipe.generate(bad, steps=1)
        with pytest.raises(UserError, match=re.escape(words)):
            pipe.encode_prompt([bad])  # the last line before the tokenizer
        status, _, data = post_job(server, json_type(), json.dumps({"kind": "txt2img", "prompt": bad}).encode())
        assert status == 400 and words in error_of(data)
    assert pipe.generate("tabs\tand\nnewlines ok, ünïcödé ✓", steps=1)  # text is fine


@pytest.mark.slow  # a fresh interpreter imports torch: a minute on a busy 2-core machine
def test_5_real_non_utf8_bytes_on_the_command_line(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    argv = [sys.executable.encode(), b"-m", b"latentdiff.cli", b"generate", b"a red \xff\xfe circle", b"--model",
            os.fsencode(tiny_model_dir), b"--out", os.fsencode(tmp_path), b"--steps", b"1"]
    proc = subprocess.run(argv, capture_output=True, env={**os.environ, "LC_ALL": "C.UTF-8"}, timeout=600)
    assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1 and b"not valid UTF-8 text (byte 0xff" in proc.stderr


# --- 6. inpainting with a mask that selects nothing ----------------------------------------------------

@pytest.fixture
def scene(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    Image.new("L", (32, 32), 0).save(tmp_path / "black.png")
    Image.new("RGBA", (32, 32), (255, 255, 255, 0)).save(tmp_path / "clear_white.png")
    Image.new("RGBA", (32, 32), (255, 0, 0, 255)).save(tmp_path / "opaque.png")
    Image.new("L", (32, 32), 100).save(tmp_path / "dim.png")  # 39 % white: below the U-Net's 0.5 threshold
    return tmp_path


@pytest.mark.parametrize("flags, words", [
    (["--mask", "{d}/black.png"], "--mask {d}/black.png: selects nothing to repaint (no pixel is 50 % white or more"),
    (["--mask", "{d}/dim.png"], "--mask {d}/dim.png: selects nothing to repaint"),
    (["--mask", "{d}/clear_white.png"], "it is white only where it is transparent, and a mask's transparency counts "
                                        "as black (keep); make the mask opaque, or pass the image with "
                                        "--mask-from-alpha"),
    (["--image", "{d}/opaque.png", "--mask-from-alpha"], "--mask-from-alpha selects nothing to repaint"),
])
def test_6_a_mask_that_selects_nothing_is_refused(tiny_model_dir, scene, capsys, never_sample, flags, words):
    """An all-black mask, or a white but fully transparent RGBA one, exited 0 with the input unchanged."""
    flags = [f.format(d=scene) for f in flags]
    image = [] if "--image" in flags else ["--image", str(scene / "img.png")]
    code, out, err = run(capsys, "inpaint", "a blue square", *image, *flags, "--model", str(tiny_model_dir),
                         "--out", str(scene / "o"), "--steps", "1")
    assert code == 2 and out == "" and err.count("\n") == 1 and words.format(d=scene) in err, err
    assert not (scene / "o").exists() or not any((scene / "o").iterdir())


def test_6_the_web_app_refuses_an_empty_mask_too(server):
    import base64
    import io

    def url(img):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    req = {"kind": "inpaint", "prompt": "x", "steps": 1, "image": url(Image.new("RGB", (32, 32))),
           "mask": url(Image.new("L", (32, 32), 0))}
    status, _, data = post_job(server, json_type(), json.dumps(req).encode())
    assert status == 400 and "mask: selects nothing to repaint" in error_of(data)


# --- Ctrl-C -------------------------------------------------------------------------------------------------

class Interrupted(Exception):
    pass


def test_ctrl_c_stops_generation_within_a_step(pipe):
    """SIGINT during a 1000-step generation: Python sees it between two operations, and within the limits
    each operation is short, so the call stops well within two seconds."""
    from latentdiff.limits import Limits as Shared

    started, when = threading.Event(), {}
    hook = pipe.unet.register_forward_hook(lambda *a: started.set())

    def on_sigint(signum, frame):
        when["seen"] = time.monotonic()
        raise Interrupted

    previous = signal.signal(signal.SIGINT, on_sigint)
    main_thread = threading.main_thread().ident

    def interrupt():
        if started.wait(60):
            when["sent"] = time.monotonic()
            signal.pthread_kill(main_thread, signal.SIGINT)
    assert pipe.limits == Shared()
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(Interrupted):
            pipe.generate("a red circle", steps=1000, sampler="ddpm", num_images=8)
    finally:
        signal.signal(signal.SIGINT, previous)
        hook.remove()
    assert when["seen"] - when["sent"] < 2.0
