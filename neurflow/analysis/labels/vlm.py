"""``vlm``: labels from any OpenAI-compatible chat-completions endpoint that accepts images
(OpenAI, vLLM, Ollama, ...), with the paper's prompts (method.md section 5).

* images go as ``data:<mime>;base64,...`` URLs in ``image_url`` content parts, the MIME type
  read from the bytes' signature (the published code labelled PNG bytes as JPEG);
* every request ends ``--timeout`` seconds after it starts, however slowly the endpoint answers
  (``endpoint.py``); timeouts, connection errors, HTTP 408/409/429/5xx and malformed replies are
  retried with exponential backoff (each delay at most ``MAX_DELAY_S``), and end in one clear
  error after the last try; a redirect is not followed (the request carries the key) and, like
  another client error, is not retried;
* an answer over ``MAX_ANSWER_BYTES`` (4 MB) is an error, not read further; the reply text kept (a
  caption, a relation, a check's answer) is cut at ``MAX_REPLY_CHARS`` (2000) characters with a
  warning, so an endpoint that ignores ``max_tokens`` cannot bloat ``circuit.json``;
* answers are cached on disk, keyed by the endpoint, model and the whole message (prompt and
  image bytes), so a rerun costs nothing; the cache lives outside the run directory
  (``--cache-dir``, default ``$XDG_CACHE_HOME/neurflow/vlm``), so a failed run leaves the
  artifact untouched;
* the API key is read from the environment variable named by ``--api-key-env`` (surrounding
  whitespace stripped; refused when a header cannot carry it) and sent only in the
  ``Authorization`` header: it is never logged, cached, written or put in an error message, and
  it is removed from whatever the endpoint sends back (a reply, an error body) before that is
  kept or shown.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import math
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import NeurFlowError
from .base import Label, Labeler, mime_of, png_size
from .endpoint import Deadline, api_key, endpoint_url, opener, read_capped

if TYPE_CHECKING:
    from ..run import Run

log = logging.getLogger(__name__)

GROUP_PROMPT = (
    "The {n} images below are image patches that most strongly activate one group of neurons in a "
    "vision model. Describe the visual features that are common to them in one or two sentences. "
    "Be objective and concrete (colours, textures, shapes, parts, objects); do not guess the class "
    "or the purpose. Some images may be outliers that do not share the features: ignore them. "
    "Answer with the description only."
)
RELATION_PROMPT = (
    "A higher-level group of neurons H in a vision model is fed by {k} lower-level groups. The first "
    "images show H's patches; then each lower group's patches follow, introduced by its name. "
    'H is described as: "{caption}". For each lower group, say in one sentence which of its visual '
    "features match which feature of H. Simple compositions count: blue + green -> blue-green, "
    "curves -> circle, two edges -> angle. Ignore outliers. Answer with one line per lower group, "
    'starting with its name and a colon (e.g. "{first}: ...").'
)
CHECK_PROMPT = (  # as published: the model is told how many of the images show the concept
    'Here are {n} images, numbered 1 to {n}. Exactly {k} of them show the following: "{caption}". '
    "Which ones? Answer with a JSON list of the numbers of the {k} matching images, for example [1, 4], "
    "and nothing else."
)
BLIND_CHECK_PROMPT = (  # --check-prompt blind: not told how many (precision then measures false picks)
    'Here are {n} images, numbered 1 to {n}. Which of them show the following: "{caption}"? '
    "Answer with a JSON list of the numbers of the matching images, for example [1, 4], and nothing else."
)
CHECK_PROMPTS = ("published", "blind")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neurflow" / "vlm"


def image_part(data: bytes) -> dict:
    url = f"data:{mime_of(data)};base64," + base64.b64encode(data).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}}


# the client's defaults (the labeler's options take the same) and its limits
API_KEY_ENV = "OPENAI_API_KEY"
TIMEOUT_S = 60.0
RETRIES = 3
BACKOFF_S = 1.0
MAX_TIMEOUT_S = 3600.0  # socket timeouts overflow past ~1e9 s; an hour per request is already a hang
MAX_RETRIES = 100
MAX_DELAY_S = 600.0  # the largest --backoff, and the cap of each doubled delay
MAX_ANSWER_BYTES = 4 * 2**20  # an answer of max_tokens=300 is a few kB; one past this is refused unread
MAX_REPLY_CHARS = 2000  # the reply text kept (a caption, a relation): ~300 tokens of English fit
ERROR_BODY_CHARS = 200  # of an error's body, in the error line


def _bounded(name: str, value, low: float, high: float, expected: str, *, above: bool = False) -> float:
    """``value`` as a float in [low, high] ((low, high] with ``above``), or one line naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and (v > low if above else v >= low) and v <= high):
        raise NeurFlowError(name, expected, value)
    return v


class ChatClient:
    """A minimal OpenAI-compatible chat-completions client (standard library only).

    Each try is bounded as a whole by ``timeout`` (not each socket read); an answer over
    ``MAX_ANSWER_BYTES`` is refused unread, a reply text over ``MAX_REPLY_CHARS`` is cut there (with
    a warning); no redirect is followed (the request carries the key); the key is removed from
    everything an endpoint sends back (replies, error bodies) before it is kept or shown."""

    def __init__(
        self,
        base_url: str | None,  # None (not given) is refused here, in one line
        model: str | None,
        api_key_env: str = API_KEY_ENV,
        timeout: float = TIMEOUT_S,
        retries: int = RETRIES,
        backoff: float = BACKOFF_S,
        cache_dir=None,
        max_tokens: int = 300,
    ):
        self.url = endpoint_url(base_url)
        if not model:
            raise NeurFlowError("model", "the name of a multimodal chat model served by the endpoint", model)
        self.timeout = _bounded("timeout", timeout, 0, MAX_TIMEOUT_S, f"seconds in (0, {MAX_TIMEOUT_S:g}]", above=True)
        self.backoff = _bounded("backoff", backoff, 0, MAX_DELAY_S, f"seconds in [0, {MAX_DELAY_S:g}]")
        if not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise NeurFlowError("retries", f"a whole number in [0, {MAX_RETRIES}]", retries)
        self.model, self.retries, self.max_tokens = model, retries, max_tokens
        self.api_key_env = api_key_env
        self._key = api_key(api_key_env)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.calls = 0  # requests actually sent (cache misses)

    def _redact(self, text: str) -> str:
        if self._key:
            for form in {self._key, json.dumps(self._key)[1:-1], json.dumps(self._key, ensure_ascii=False)[1:-1]}:
                text = text.replace(form, "***")
        return text

    def _snippet(self, raw: bytes, n: int) -> str:
        """The first ``n`` characters of what an endpoint sent, for an error line: the key removed
        before the cut (no part of it left), whitespace runs as one space."""
        return " ".join(self._redact(raw.decode("utf-8", "replace"))[:n].split())

    def _kept(self, reply: str) -> str:
        reply = self._redact(reply.strip())
        if len(reply) > MAX_REPLY_CHARS:
            log.warning("vlm: an answer of %d characters cut to %d", len(reply), MAX_REPLY_CHARS)
            reply = reply[:MAX_REPLY_CHARS] + "…"
        return reply

    def _cache_path(self, body: dict) -> Path:
        key = hashlib.sha256(json.dumps({"url": self.url, **body}, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def complete(self, content: list) -> str:
        """Send one user message (a list of content parts); returns the reply text."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        path = self._cache_path(body)
        try:  # a damaged cache entry (not a JSON object, no text, too large) is asked again
            if path.is_file() and path.stat().st_size <= MAX_ANSWER_BYTES:
                cached = json.loads(path.read_text())["reply"]
                if isinstance(cached, str) and cached.strip():
                    return self._kept(cached)
        except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError):
            pass
        reply = self._send(body)
        from ...store import atomic_write  # torch: loaded when an answer is cached, not at import

        try:
            atomic_write(path, json.dumps({"model": self.model, "reply": reply}).encode())
        except OSError as exc:  # a read-only cache costs reruns, nothing else
            log.warning("vlm: could not write the cache %s: %s", self.cache_dir, exc.strerror)
        return reply

    def _fail(self, expected: str, hint: str) -> NeurFlowError:
        return NeurFlowError("base_url", expected, self.url, hint)

    def _send(self, body: dict) -> str:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff * 2.0 ** min(attempt - 1, 30), MAX_DELAY_S)
                log.info("vlm: retry %d/%d in %.1f s (%s)", attempt, self.retries, delay, last)
                time.sleep(delay)
            self.calls += 1
            outcome = self._try(data, headers)
            if isinstance(outcome, str):  # why the try failed: retried
                last = outcome
                continue
            raw = outcome
            try:
                reply = json.loads(raw)["choices"][0]["message"]["content"]
                if isinstance(reply, list):  # content parts
                    reply = "".join(p.get("text", "") for p in reply if isinstance(p, dict))
                if not isinstance(reply, str) or not reply.strip():
                    raise ValueError("empty content")
                return self._kept(reply)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
                last = "malformed reply: " + self._snippet(raw, 120)
        raise self._fail(
            "an answer from the chat-completions endpoint", f"no usable answer after {self.retries + 1} tries: {last}"
        )

    def _try(self, data: bytes, headers: dict) -> bytes | str:
        """One request: the answer's bytes, or (to retry) why it failed; a NeurFlowError for what a
        retry cannot mend (a redirect, a client error, an answer too large)."""
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        deadline = Deadline(self.timeout)
        try:
            with opener(deadline, self.url).open(req, timeout=self.timeout) as resp:
                raw = read_capped(resp, MAX_ANSWER_BYTES)
            if deadline.expired:
                return "timed out"
            if raw is None:
                raise self._fail(
                    f"an answer of at most {MAX_ANSWER_BYTES // 2**20} MB",
                    "the endpoint sent more; it was not read further",
                )
            return raw
        except urllib.error.HTTPError as exc:
            return self._http_error(exc, deadline)
        except (OSError, http.client.HTTPException) as exc:  # no answer, or one that is not HTTP
            reason = getattr(exc, "reason", exc)
            if deadline.expired or isinstance(reason, (socket.timeout, TimeoutError)):
                return "timed out"
            what = "not an HTTP answer: " if isinstance(reason, http.client.HTTPException) else ""
            return what + (self._snippet(str(reason).encode("utf-8", "replace"), 160) or type(reason).__name__)
        finally:
            deadline.cancel()

    def _http_error(self, exc: urllib.error.HTTPError, deadline: Deadline) -> str:
        try:
            body = exc.read(4 * ERROR_BODY_CHARS + 4 * len(self._key or ""))
        except (OSError, http.client.HTTPException):
            body = b""
        finally:
            exc.close()
        if deadline.expired:
            return "timed out"
        detail = self._snippet(body, ERROR_BODY_CHARS)
        last = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
        if 300 <= exc.code < 400:
            try:
                target = urllib.parse.urljoin(self.url, exc.headers.get("Location") or "")
                host = urllib.parse.urlsplit(target).netloc.rsplit("@", 1)[-1][:100] or "nowhere"
            except ValueError:
                host = "an unreadable Location"
            raise self._fail(
                "a chat-completions endpoint that answers without a redirect",
                f"HTTP {exc.code} to {host}: not followed, the request carries the API key; "
                "give the final URL as {p:base_url}",
            )
        if exc.code in (408, 409, 429) or exc.code >= 500:
            return last
        hint = "check {p:api_key_env}" if exc.code in (401, 403) else "check {p:base_url} and {p:model}"
        raise self._fail("a working chat-completions endpoint", f"{last}; {hint}")


def _whole(x) -> int:
    """An image number as a model writes it (4, 4.0, "4"); a fraction, a boolean or inf is no number."""
    if isinstance(x, str) and x.strip().isdecimal():
        return int(x)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not float(x).is_integer():
        raise ValueError(x)
    return int(x)


def parse_numbers(reply: str, n: int) -> list[int]:
    """0-based positions from a reply such as ``[1, 4]`` (1-based numbers)."""
    m = re.search(r"\[[^\[\]]*\]", reply)
    if not m:
        raise NeurFlowError("labeler answer", "a JSON list of image numbers", reply[:80])
    try:
        nums = [_whole(x) for x in json.loads(m.group(0))]
    except (ValueError, TypeError, RecursionError):
        raise NeurFlowError("labeler answer", "a JSON list of image numbers", m.group(0)[:80]) from None
    return sorted({x - 1 for x in nums if 1 <= x <= n})


class VLMLabeler(Labeler):
    name = "vlm"
    can_check = True
    can_relate = True
    default_groups = "traced"  # each group costs requests: the traced ones unless --groups all

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str = API_KEY_ENV,
        timeout: float = TIMEOUT_S,
        retries: int = RETRIES,
        backoff: float = BACKOFF_S,
        cache_dir=None,
        n_images: int = 10,
        image_size: int | None = None,
        check_prompt: str = "published",
    ):
        self.client = ChatClient(base_url, model, api_key_env, timeout, retries, backoff, cache_dir)
        self.n_images = n_images
        if image_size is not None and not (isinstance(image_size, int) and image_size >= 1):
            raise NeurFlowError("image_size", "a positive number of px (the longest side of a crop sent)", image_size)
        if check_prompt not in CHECK_PROMPTS:
            raise NeurFlowError("check_prompt", " or ".join(CHECK_PROMPTS), check_prompt)
        self.image_size = int(image_size) if image_size is not None else None
        self.check_prompt = check_prompt
        self.tells_count = check_prompt == "published"

    def _images(self, run: Run, crops) -> list[dict]:
        """The crops as image parts, at the resolution the model saw them (capped by image_size)."""
        return [image_part(b) for b in run.crop_pngs(crops, self.image_size)]

    def label_group(self, run: Run, layer, group) -> Label:
        crops = layer.group_exemplars(group, self.n_images)
        pngs = run.crop_pngs(crops, self.image_size)
        content = [{"type": "text", "text": GROUP_PROMPT.format(n=len(crops))}]
        content += [image_part(b) for b in pngs]
        text = self.client.complete(content)
        evidence = {"model": self.client.model, "crops": crops, "check_prompt": self.check_prompt}
        if pngs:
            evidence["image_px"] = png_size(pngs[0])[0]
        return Label(text, self.name, None, evidence)

    def pick(self, run: Run, text: str, crops: list[int], n_true: int | None = None) -> list[int]:
        if n_true is not None:
            prompt = CHECK_PROMPT.format(n=len(crops), k=n_true, caption=text)
        else:
            prompt = BLIND_CHECK_PROMPT.format(n=len(crops), caption=text)
        content = [{"type": "text", "text": prompt}]
        for i, part in enumerate(self._images(run, crops), 1):
            content += [{"type": "text", "text": f"Image {i}:"}, part]
        return parse_numbers(self.client.complete(content), len(crops))

    def label_relation(self, run: Run, layer, group, lower, feeders: list) -> dict:
        names = [f"{lower.name}/G{g.id}" for g in feeders]
        caption = group.label.get("text") if group.label else ""
        content = [
            {"type": "text", "text": RELATION_PROMPT.format(k=len(feeders), caption=caption, first=names[0])},
            {"type": "text", "text": f"H = {layer.name}/G{group.id}:"},
        ]
        content += self._images(run, layer.group_exemplars(group, 5))
        for name, g in zip(names, feeders):
            content.append({"type": "text", "text": f"{name}:"})
            content += self._images(run, lower.group_exemplars(g, 5))
        return {
            "text": self.client.complete(content),
            "labeler": self.name,
            "lower_layer": lower.name,
            "lower": [g.id for g in feeders],
            "model": self.client.model,
        }
