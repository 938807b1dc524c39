"""The HTTP side of the ``vlm`` client, standard library only: the endpoint's URL and the API key
checked before anything is sent, one request bounded as a whole, its answer read up to a limit.

* ``endpoint_url``: an http(s) URL with a host (surrounding whitespace stripped), refused in one line
  with inner whitespace or control characters, non-ASCII characters, credentials, a query or a
  fragment, or a bad port;
* ``api_key``: the key stripped of surrounding whitespace (a key file with CRLF endings leaves a
  ``\\r``), refused with its variable's name and its length - never its value - when an HTTP header
  cannot carry it;
* ``Deadline`` + ``opener``: a request ends ``timeout`` seconds after it starts, whatever the endpoint
  does (a socket timeout bounds each read only: an endpoint sending one byte at a time never hits
  it); no redirect is followed (a 3xx is an ``HTTPError``: the request carries the key, and a
  POST turned into a GET elsewhere answers another question); proxies come from the environment
  (``HTTPS_PROXY``, ``NO_PROXY``, ...) except for a loopback endpoint, which no proxy can reach;
* ``read_capped``: the answer's bytes, or None once it is longer than the limit (not read further).
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import urllib.parse
import urllib.request

from ...errors import NeurFlowError

LOOPBACK = re.compile(r"^(localhost|127(\.\d{1,3}){3}|::1)$", re.IGNORECASE)


def endpoint_url(base_url) -> str:
    """The chat-completions URL of ``base_url`` (``.../chat/completions``), once it is checked."""
    url = str(base_url).strip() if base_url is not None else ""
    shown = base_url
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises on a port that is not a number in 0-65535
    except ValueError:
        parts, port = urllib.parse.urlsplit(""), -1
    if not url:
        problem = "no URL"
    elif any(c.isspace() or not c.isprintable() for c in url):
        problem = "a space or control character inside the URL"
    elif port == -1:
        problem = "a bad host or port"
    elif parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        problem = "not an http(s) URL with a host"
    elif not url.isascii():
        problem = "non-ASCII characters: percent-encode them (punycode for the host)"
    elif "@" in parts.netloc:
        problem = "credentials in the URL: put the key in the variable named by {p:api_key_env}"
        shown = urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
    elif parts.query or parts.fragment or url.endswith(("?", "#")):
        problem = "a query or fragment (the client appends /chat/completions)"
    elif not parts.hostname:
        problem = "no host"
    else:
        return url.rstrip("/") + "/chat/completions"
    raise NeurFlowError(
        "base_url",
        "an http(s) URL of an OpenAI-compatible API, e.g. https://api.openai.com/v1 or http://localhost:11434/v1",
        shown,
        problem,
    )


def api_key(env: str | None) -> str | None:
    """The key in the environment variable ``env`` (None when unset or blank)."""
    key = (os.environ.get(env) or "").strip() if env else ""
    for i, c in enumerate(key, 1):
        bad = "not printable" if not c.isprintable() else "not latin-1" if ord(c) > 0xFF else ""
        if bad:
            raise NeurFlowError(
                "api_key_env",
                "an API key of printable latin-1 characters (what an HTTP header carries)",
                f"${env}: a {len(key)}-character key whose character {i} is {bad}",
                "the key is not shown; check the variable or the file it was read from",
            )
    return key or None


class Deadline:
    """The end of one request, ``seconds`` from now: then the sockets of its connection are shut
    down, so that a read blocked on a slow endpoint (headers or body) ends and ``expired`` tells
    why.  The connect itself is bounded by the socket timeout.  ``cancel`` before the response is
    closed: a closed socket's shutdown fails harmlessly, it never reaches another file."""

    def __init__(self, seconds: float):
        self.expired = False
        self._socks: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    @staticmethod
    def _shut(sock) -> None:
        try:  # socket.socket's own shutdown: an SSL socket's would drop its state under the reader
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:  # already closed
            pass

    def watch(self, sock) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired:
                self._shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                self._shut(sock)

    def cancel(self) -> None:
        with self._lock:
            self._timer.cancel()
            self._socks.clear()


class _Watched:
    """An HTTP(S) handler whose connections hand their socket to the request's deadline."""

    def __init__(self, deadline: Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, req, **kw):
        deadline = self.deadline

        class Connection(http_class):  # type: ignore[valid-type,misc]
            def connect(self):
                super().connect()
                deadline.watch(self.sock)

        return super().do_open(Connection, req, **kw)  # type: ignore[misc]


class _HTTP(_Watched, urllib.request.HTTPHandler):
    pass


class _HTTPS(_Watched, urllib.request.HTTPSHandler):
    pass


def opener(deadline: Deadline, url: str) -> urllib.request.OpenerDirector:
    """An opener for ``url``'s request: http(s) only, no redirect handler, the deadline watching."""
    director = urllib.request.OpenerDirector()
    loopback = LOOPBACK.match(urllib.parse.urlsplit(url).hostname or "")
    for handler in (
        urllib.request.ProxyHandler({} if loopback else None),
        _HTTP(deadline),
        _HTTPS(deadline),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        director.add_handler(handler)
    return director


def read_capped(resp, limit: int) -> bytes | None:
    """The body of ``resp``, or None when it is longer than ``limit`` bytes (by its Content-Length,
    or once ``limit + 1`` bytes are read); ``IncompleteRead`` when it ends before its Content-Length."""
    length = (resp.headers.get("Content-Length") or "").strip()
    if length.isdigit() and int(length) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = resp.read(min(2**16, limit + 1 - size))
        if not chunk:
            if length.isdigit() and size < int(length):  # read(n) returns short where read() would raise
                raise http.client.IncompleteRead(b"".join(chunks), int(length) - size)
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None
