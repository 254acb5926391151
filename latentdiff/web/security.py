"""Who may use the web app: the checks a request passes before any route runs (as Jupyter's server does).

The server is a local tool for the person who started it, not a multi-user service. What it defends against:

* **Other web pages** the user has open. A browser sends a cross-origin ``POST`` with a "simple" content type
  (``text/plain``, a form) without asking first, so any page could queue jobs. Refused: API requests whose
  ``Origin`` is not this server's own (or one given with ``--allow-origin``), whose ``Sec-Fetch-Site`` says
  another site or origin sent them (this also stops ``<img src=…/api/images/…>`` on another page), and
  ``POST`` bodies without ``Content-Type: application/json`` (a type a page can only send cross-origin after
  a CORS preflight, which the server never grants).
* **DNS rebinding**: a page whose own name is made to resolve to 127.0.0.1 is same-origin with the server
  and could read its answers. Refused: every request whose ``Host`` is not an address the server listens on
  (a loopback address, the ``--host`` address, any address when bound to all of them), ``localhost``, the
  name bound with ``--host`` or, when bound beyond loopback, this machine's name (``--allow-host NAME`` adds
  names, for a reverse proxy). An IP address cannot be rebound; a name can.
* **Other machines**, when bound beyond loopback (``--host 0.0.0.0``): every API call needs the per-launch
  token (:func:`new_token`, or the ``LATENTDIFF_TOKEN`` environment variable), printed in the URL the server
  logs. Opening that URL (``/?token=…``) stores it in an HttpOnly, SameSite=Strict cookie for the page;
  scripts send ``Authorization: Bearer TOKEN``. On loopback the token is off unless ``--token on`` (other
  users of the same machine can reach a loopback port: turn it on on a shared machine).

It does not encrypt (plain HTTP: beyond loopback use it on a network you trust, or behind a TLS proxy),
separate users (everyone with the token sees every job) or limit how many connections one client opens.
Refusals are ``403 {"error": …}`` (``415`` for a body that is not JSON) and name what to change.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from latentdiff.errors import UserError

AUTH_MODES = ("auto", "on", "off")
TOKEN_ENV = "LATENTDIFF_TOKEN"
WILDCARDS = ("", "0.0.0.0", "::")
# Sec-Fetch-Site values of requests the server's own page (or a person typing the URL) makes.
SAME_SITE = ("same-origin", "none")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_required(host: str, auth: str = "auto") -> bool:
    """Whether API calls need the token: ``auth`` on | off | auto (auto: on when bound beyond loopback).
    ``off`` beyond loopback is refused: the network would get every job and image."""
    if auth not in AUTH_MODES:
        raise UserError(f"--token {auth!r}: expected one of {', '.join(AUTH_MODES)} (the token's value comes from "
                        f"the {TOKEN_ENV} environment variable, else a new random one each launch)")
    if auth == "off" and not is_loopback(host):
        raise UserError(f"--token off: refused with --host {host or '0.0.0.0'}, which is reachable from other "
                        f"machines; keep the token, or bind 127.0.0.1 (behind a proxy: --allow-host NAME)")
    return auth == "on" or (auth == "auto" and not is_loopback(host))


def new_token() -> str:
    """The token of this launch: ``LATENTDIFF_TOKEN`` when set, else 32 random bytes (URL-safe base64)."""
    given = os.environ.get(TOKEN_ENV)
    if given is not None:
        if not re.fullmatch(r"[A-Za-z0-9._~-]{16,256}", given):
            raise UserError(f"{TOKEN_ENV}: expected 16 to 256 characters of A-Z, a-z, 0-9, '.', '_', '~' or '-'")
        return given
    return secrets.token_urlsafe(32)


def parse_origins(origins) -> frozenset[str]:
    """``--allow-origin`` values as origins (``scheme://host[:port]``, lower-cased); a one-line error for
    anything else."""
    out = set()
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise UserError(f"--allow-origin {origin!r}: expected scheme://host[:port], e.g. http://localhost:3000")
        out.add(f"{parts.scheme}://{parts.netloc}".lower())
    return frozenset(out)


def host_name(value: str | None) -> str | None:
    """The host part of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), lower-cased; None when
    it is malformed."""
    if not value:
        return None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?|([^\s:/\[\]@]+)(?::\d{1,5})?", value.strip())
    if m is None:
        return None
    return (m.group(1) or m.group(2)).lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str


@dataclass(frozen=True)
class Guard:
    """The checks of one server: ``token`` (None: not needed), the names accepted in ``Host``, the IP
    addresses accepted there besides loopback ones (None: any, for a server bound to every address), extra
    origins accepted besides the server's own, and the name of the token's cookie."""

    token: str | None
    hosts: frozenset[str] = frozenset({"localhost"})
    ips: frozenset[str] | None = frozenset()
    origins: frozenset[str] = field(default_factory=frozenset)
    cookie: str = "latentdiff-token"

    @classmethod
    def for_server(cls, host: str, port: int, auth: str = "auto", token: str | None = None,
                   allow_hosts=(), allow_origins=()) -> "Guard":
        """The guard of a server bound to ``host:port``: the token when :func:`token_required` says so
        (``token`` or :func:`new_token`), the names it answers to and the extra origins."""
        needed = token_required(host, auth)
        names = {"localhost", *(h.lower() for h in allow_hosts)}
        ips = None if host in WILDCARDS else frozenset()
        if host not in WILDCARDS and _is_ip(host.strip("[]")):
            ips = frozenset({str(ipaddress.ip_address(host.strip("[]")))})
        elif host not in WILDCARDS:
            names.add(host.lower())
        if not is_loopback(host):
            names.add(socket.gethostname().lower())
        return cls(token=(token or new_token()) if needed else None, hosts=frozenset(names), ips=ips,
                   origins=parse_origins(allow_origins), cookie=f"latentdiff-token-{port}")

    # --- checks ------------------------------------------------------------------------------------

    def check_host(self, headers) -> Refusal | None:
        """Every request: a ``Host`` this server answers to (DNS rebinding)."""
        values = headers.get_all("Host") or []
        name = host_name(values[0]) if len(values) == 1 else None
        if name is None:
            return Refusal(400, "the request needs one valid Host header")
        if name in self.hosts or (_is_ip(name) and (is_loopback(name) or self.ips is None or
                                                     str(ipaddress.ip_address(name)) in self.ips)):
            return None
        return Refusal(403, f"Host {values[0]!r} is not a name this server answers to (a guard against DNS "
                            f"rebinding); start it with --allow-host {name} to allow it")

    def check_api(self, headers) -> Refusal | None:
        """API requests: sent by this server's own page (Origin, Sec-Fetch-Site) with the token when needed."""
        origin = headers.get("Origin")
        allowed = origin is not None and origin.strip().lower() in self.origins  # --allow-origin
        if origin is not None and not allowed and not self._own_origin(origin, headers.get("Host", "")):
            return Refusal(403, f"requests from the page at {origin[:100]!r} are refused: only this server's own "
                                f"page may use its API (--allow-origin adds an origin)")
        site = (headers.get("Sec-Fetch-Site") or "none").lower()
        if site not in SAME_SITE and not allowed:
            return Refusal(403, f"a {site} request is refused: only this server's own page may use its API")
        if self.token is not None and not self.has_token(headers):
            return Refusal(403, "this server needs its token: open the URL it printed when it started "
                                "(…/?token=…), or send the header 'Authorization: Bearer TOKEN'")
        return None

    def _own_origin(self, origin: str, host: str) -> bool:
        origin, host = origin.strip().lower(), host.strip().lower()
        return origin in (f"http://{host}", f"https://{host}")

    def has_token(self, headers) -> bool:
        """A matching token in the ``Authorization`` header (Bearer or token) or in the cookie."""
        auth = headers.get("Authorization") or ""
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() in ("bearer", "token") and self.matches(value.strip()):
            return True
        return self.matches(self.cookie_value(headers))

    def cookie_value(self, headers) -> str | None:
        for header in headers.get_all("Cookie") or []:
            for part in header.split(";"):
                name, _, value = part.strip().partition("=")
                if name == self.cookie:
                    return value.strip()
        return None

    def matches(self, value: str | None) -> bool:
        return bool(self.token and value) and hmac.compare_digest(value.encode("utf-8", "replace"),
                                                                 self.token.encode())

    def query_token(self, path: str) -> str | None:
        """The ``token`` query parameter of a page URL (``/?token=…``), or None."""
        query = urlsplit(path).query
        try:
            values = parse_qs(query, max_num_fields=20).get("token") if query else None
        except ValueError:  # too many fields
            return None
        return values[0] if values else None

    def set_cookie(self) -> str:
        """The ``Set-Cookie`` value that keeps the token for the page (HttpOnly: scripts cannot read it)."""
        return f"{self.cookie}={self.token}; HttpOnly; SameSite=Strict; Path=/"
