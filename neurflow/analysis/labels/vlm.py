"""``vlm``: labels from any OpenAI-compatible chat-completions endpoint that accepts images
(OpenAI, vLLM, Ollama, ...), with the paper's prompts (method.md section 5).

* images go as ``data:<mime>;base64,...`` URLs in ``image_url`` content parts, the MIME type
  read from the bytes' signature (the published code labelled PNG bytes as JPEG);
* every request has a timeout; timeouts, connection errors, HTTP 429/5xx and malformed replies
  are retried with exponential backoff, and end in one clear error after the last try;
* answers are cached on disk, keyed by the endpoint, model and the whole message (prompt and
  image bytes), so a rerun costs nothing; the cache lives outside the run directory
  (``--cache-dir``, default ``$XDG_CACHE_HOME/neurflow/vlm``), so a failed run leaves the
  artifact untouched;
* the API key is read from the environment variable named by ``--api-key-env`` and sent only in
  the ``Authorization`` header: it is never logged, cached, written or put in an error message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import NeurFlowError
from .base import Label, Labeler, mime_of, png_size

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


# the client's defaults (the labeler's options take the same)
API_KEY_ENV = "OPENAI_API_KEY"
TIMEOUT_S = 60.0
RETRIES = 3
BACKOFF_S = 1.0


class ChatClient:
    """A minimal OpenAI-compatible chat-completions client (standard library only)."""

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
        if not base_url or not re.match(r"^https?://", str(base_url)):
            raise NeurFlowError(
                "base_url",
                "an http(s) URL of an OpenAI-compatible API, e.g. https://api.openai.com/v1 "
                "or http://localhost:11434/v1",
                base_url,
            )
        if not model:
            raise NeurFlowError("model", "the name of a multimodal chat model served by the endpoint", model)
        if timeout <= 0 or retries < 0:
            raise NeurFlowError(
                "timeout" if timeout <= 0 else "retries", "a positive timeout and retries >= 0", (timeout, retries)
            )
        self.url = str(base_url).rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self._key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout, self.retries, self.backoff, self.max_tokens = timeout, retries, backoff, max_tokens
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.calls = 0  # requests actually sent (cache misses)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

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
        if path.is_file():
            try:
                return json.loads(path.read_text())["reply"]
            except (OSError, ValueError, KeyError):
                pass
        reply = self._send(body)
        from ...store import atomic_write  # torch: loaded when an answer is cached, not at import

        try:
            atomic_write(path, json.dumps({"model": self.model, "reply": reply}).encode())
        except OSError as exc:  # a read-only cache costs reruns, nothing else
            log.warning("vlm: could not write the cache %s: %s", self.cache_dir, exc.strerror)
        return reply

    def _send(self, body: dict) -> str:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = self.backoff * 2 ** (attempt - 1)
                log.info("vlm: retry %d/%d in %.1f s (%s)", attempt, self.retries, delay, last)
                time.sleep(delay)
            self.calls += 1
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as exc:
                detail = self._redact(exc.read()[:200].decode("utf-8", "replace").strip().replace("\n", " "))
                last = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
                if exc.code in (408, 409, 429) or exc.code >= 500:
                    continue
                hint = "check {p:api_key_env}" if exc.code in (401, 403) else "check {p:base_url} and {p:model}"
                raise NeurFlowError(
                    "base_url", "a working chat-completions endpoint", self.url, f"{last}; {hint}"
                ) from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                last = (
                    "timed out"
                    if isinstance(reason, (socket.timeout, TimeoutError))
                    else self._redact(str(reason))[:160]
                )
                continue
            try:
                reply = json.loads(raw)["choices"][0]["message"]["content"]
                if isinstance(reply, list):  # content parts
                    reply = "".join(p.get("text", "") for p in reply if isinstance(p, dict))
                if not isinstance(reply, str) or not reply.strip():
                    raise ValueError("empty content")
                return reply.strip()
            except (ValueError, KeyError, IndexError, TypeError):
                last = "malformed reply: " + self._redact(raw[:120].decode("utf-8", "replace").replace("\n", " "))
                continue
        raise NeurFlowError(
            "base_url",
            "an answer from the chat-completions endpoint",
            self.url,
            f"no usable answer after {self.retries + 1} tries: {last}",
        )


def parse_numbers(reply: str, n: int) -> list[int]:
    """0-based positions from a reply such as ``[1, 4]`` (1-based numbers)."""
    m = re.search(r"\[[^\[\]]*\]", reply)
    if not m:
        raise NeurFlowError("labeler answer", "a JSON list of image numbers", reply[:80])
    try:
        nums = json.loads(m.group(0))
        nums = [int(x) for x in nums]
    except (ValueError, TypeError):
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
        if image_size is not None and int(image_size) < 1:
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
