"""The ``vlm`` labeler against a local OpenAI-compatible server started by the tests."""

import base64
import json
import logging
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from neurflow import load
from neurflow.analysis.labels import get_labeler, label_run
from neurflow.cli import main

from conftest import one_line, tiny_run

KEY = "sk-test-SECRET-1234567890"
MODEL = "test-vlm"
HOSTILE = (
    "redirect",
    "echo",
    "huge",
    "huge-length",
    "long",
    "500-cut",
    "garbage",
    "truncated",
    "deep",
    "drip-head",
    "drip-body",
)


class FakeAPI:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 that checks every request and
    answers deterministically.  ``mode``: ok, 500, slow, malformed, nochoices, 401, flaky, or one of
    ``HOSTILE`` (a ``redirect`` answers ``code`` pointing to ``location``)."""

    def __init__(self, mode="ok", location=None, code=302):
        self.mode, self.requests, self.problems, self.hits = mode, [], [], 0
        self.arrivals: list[float] = []  # time.monotonic() of each request, as the endpoint sees it
        self.ends: list[float] = []  # seconds from a dripping request's arrival to the client's hang-up
        self.gets: list[dict] = []  # the headers of each GET (a redirected POST)
        self.location, self.code, self.stop = location, code, threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # what a client that follows a redirect with a GET asks
                api.hits += 1
                api.gets.append(dict(self.headers))
                text = "the answer to a GET, without the prompt"
                self.reply(200, json.dumps({"choices": [{"message": {"content": text}}]}).encode())

            def do_POST(self):
                api.hits += 1
                api.arrivals.append(time.monotonic())
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                api.check(self.path, self.headers, body)
                if api.mode in HOSTILE:
                    return api.hostile(self)
                if api.mode == "slow":
                    time.sleep(1.0)
                if api.mode == "500" or (api.mode == "flaky" and api.hits % 2 == 1):
                    return self.reply(500, b'{"error": "overloaded, your key ' + KEY.encode() + b' is fine"}')
                if api.mode == "401":
                    return self.reply(401, b'{"error": "bad key"}')
                if api.mode == "malformed":
                    return self.reply(200, b"<html>not json</html>")
                if api.mode == "nochoices":
                    return self.reply(200, b'{"object": "chat.completion", "choices": []}')
                text = api.answer(json.loads(body))
                self.reply(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode())

            def reply(self, code, data):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hostile(self, h):
        """The answers of the ``HOSTILE`` modes, written by hand on the handler ``h``'s socket."""
        mode, out = self.mode, h.wfile
        try:
            if mode == "redirect":
                h.send_response(self.code)
                h.send_header("Location", self.location)
                h.send_header("Content-Length", "0")
                h.end_headers()
            elif mode == "echo":  # an endpoint that repeats the request's headers in its answer
                text = f"I was asked with {h.headers.get('Authorization')}"
                h.reply(200, json.dumps({"choices": [{"message": {"content": text}}]}).encode())
            elif mode in ("huge", "huge-length", "long"):
                n = 32 * 2**20 if mode != "long" else 100_000
                head, tail = b'{"choices": [{"message": {"content": "', b'"}}]}'
                h.send_response(200)
                if mode != "huge":
                    h.send_header("Content-Length", str(len(head) + n + len(tail)))
                h.end_headers()
                out.write(head)
                for _ in range(n // 2**16):
                    out.write(b"a" * 2**16)
                out.write(b"a" * (n % 2**16) + tail)
            elif mode == "500-cut":  # the key straddles the first 200 bytes of an error's body
                h.reply(500, b"x" * 190 + KEY.encode() + b" was used")
            elif mode == "garbage":  # not HTTP at all (with the key in it)
                out.write(b"HELLO " + KEY.encode() + b"\r\n\r\n")
            elif mode == "truncated":  # a Content-Length the body never reaches
                out.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"choices"')
            elif mode == "deep":  # valid JSON nested past Python's recursion limit
                h.reply(200, b"[" * 100_000 + b"]" * 100_000)
            elif mode.startswith("drip"):  # one byte every 50 ms: every socket read succeeds, none ends
                start = time.monotonic()
                if mode == "drip-body":
                    out.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                data = b'{"choices": [' if mode == "drip-body" else b"HTTP/1.1 200 OK\r\nX-Slow: "
                while not self.stop.is_set():
                    out.write(data[:1])
                    out.flush()
                    data = data[1:] or b"a"
                    time.sleep(0.05)
                self.ends.append(time.monotonic() - start)
        except (BrokenPipeError, ConnectionResetError):
            if mode.startswith("drip"):
                self.ends.append(time.monotonic() - start)

    def check(self, path, headers, raw):
        try:
            body = json.loads(raw)
            assert path == "/v1/chat/completions", path
            assert headers.get("Authorization") == f"Bearer {KEY}", "no or wrong bearer key"
            assert headers.get("Content-Type") == "application/json"
            assert body["model"] == MODEL and body["messages"][0]["role"] == "user"
            images = [p for p in body["messages"][0]["content"] if p["type"] == "image_url"]
            assert images, "no images"
            for p in images:
                url = p["image_url"]["url"]
                head, data = url.split(",", 1)
                assert head == "data:image/png;base64", head
                assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n"), "MIME type does not match the bytes"
            self.requests.append(body)
        except Exception as exc:  # noqa: BLE001 - collected and asserted by the test
            self.problems.append(repr(exc))

    @staticmethod
    def answer(body) -> str:
        parts = body["messages"][0]["content"]
        text = parts[0]["text"]
        n = sum(p["type"] == "image_url" for p in parts)
        if text.startswith("Here are"):
            return "The matching images are [1, 2]."
        if text.startswith("A higher-level"):
            names = [p["text"][:-1] for p in parts[2:] if p["type"] == "text"]
            return "\n".join(f"{name}: its edges form the corners of H" for name in names)
        digest = sum(
            base64.b64decode(p["image_url"]["url"].split(",", 1)[1])[-20] for p in parts if p["type"] == "image_url"
        )
        return f"dark rounded patches ({n} images, {digest % 97})"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api():
    servers = []

    def start(mode="ok", **kw):
        servers.append(FakeAPI(mode, **kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NF_TEST_KEY", KEY)
    tiny_run(tmp_path / "run")
    return tmp_path / "run"


def vlm_args(run_dir, url, cache, *extra):
    return [
        "label",
        str(run_dir),
        "--labeler",
        "vlm",
        "--base-url",
        url,
        "--model",
        MODEL,
        "--api-key-env",
        "NF_TEST_KEY",
        "--cache-dir",
        str(cache),
        "--quiet",
        *extra,
    ]


def test_labels_checks_relations_and_request_shape(run_dir, api, tmp_path, capsys, caplog):
    server = api("ok")
    caplog.set_level(logging.DEBUG)
    assert main(vlm_args(run_dir, server.url, tmp_path / "cache")) == 0
    assert not server.problems, server.problems
    out = capsys.readouterr()
    c = load(run_dir)
    traced = dict(c.trace)
    labelled = [(l.name, g.id) for l in c.layers for g in l.groups if g.label is not None]
    assert sorted(labelled) == sorted((l.name, g) for l in c.layers[1:] for g in traced[l.name])  # the traced groups
    for name, gid in labelled:
        g = c.layer(name).groups[gid]
        assert g.label["labeler"] == "vlm" and g.label["text"].startswith("dark rounded patches")
        check = g.label["check"]
        # the server picks images 1 and 2 of the mixed list: scored by position, not by neuron id
        shown, true = check["shown"], check["true"]
        assert check["picked"] == shown[:2]
        hits = len(set(shown[:2]) & set(true))
        assert check["precision"] == pytest.approx(hits / 2) and check["recall"] == pytest.approx(hits / len(true))
        assert check["n_random"] == len(shown) - len(true) and set(true) <= set(shown)
    # prompts: group captions carry the group's display exemplars; checks number the images
    kinds = [r["messages"][0]["content"][0]["text"][:9] for r in server.requests]
    assert kinds.count("The 6 ima") + sum(k.startswith("The ") for k in kinds) >= len(labelled)
    checks = [r for r in server.requests if r["messages"][0]["content"][0]["text"].startswith("Here are")]
    assert len(checks) == len(labelled)
    numbered = [p["text"] for p in checks[0]["messages"][0]["content"][1:] if p["type"] == "text"]
    assert numbered[:2] == ["Image 1:", "Image 2:"]
    assert all(r["temperature"] == 0 for r in server.requests)
    # relations: a traced group of the analysed layer above the lowest one, with its feeders
    rel = {(l.name, g.id): g for l in c.layers for g in l.groups if g.relation is not None}
    # by hand: every labelled group with a lower analysed layer and a positive edge into it
    names = [l.name for l in c.layers]
    want = {
        (name, gid)
        for name, gid in labelled
        if names.index(name) + 1 < len(names) and any(w > 0 for w in c.layer(name).group_edges.get(gid, {}).values())
    }
    assert want and sorted(rel) == sorted(want)
    for (name, gid), g in rel.items():
        below = names[names.index(name) + 1]
        row = c.layer(name).group_edges[gid]
        best = sorted((h for h, w in row.items() if w > 0), key=lambda h: (-row[h], h))[:3]
        assert g.relation["lower_layer"] == below and g.relation["lower"] == best
        # the fake server answers one line per feeder it was shown, named as the prompt names it
        assert g.relation["text"].splitlines() == [f"{below}/G{h}: its edges form the corners of H" for h in best]
    # the key is nowhere: output, logs, artifact, cache
    blob = (
        out.out + out.err + caplog.text + (run_dir / "circuit.json").read_text() + (run_dir / "report.html").read_text()
    )
    blob += "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert KEY not in blob
    assert "dark rounded patches" in (run_dir / "report.html").read_text()
    capsys.readouterr()
    assert main(["show", str(run_dir)]) == 0
    assert "labels:" in capsys.readouterr().out


def test_a_rerun_is_answered_from_the_cache(run_dir, api, tmp_path):
    server = api("ok")
    lab = get_labeler("vlm", base_url=server.url, model=MODEL, api_key_env="NF_TEST_KEY", cache_dir=tmp_path / "c")
    first = label_run(run_dir, lab)
    sent = server.hits
    assert sent > 0 and lab.client.calls == sent
    lab2 = get_labeler("vlm", base_url=server.url, model=MODEL, api_key_env="NF_TEST_KEY", cache_dir=tmp_path / "c")
    assert label_run(run_dir, lab2) == first
    assert server.hits == sent and lab2.client.calls == 0  # nothing sent the second time
    # another model name is another cache key: asked again
    lab3 = get_labeler("vlm", base_url=server.url, model="other", api_key_env="NF_TEST_KEY", cache_dir=tmp_path / "c")
    label_run(run_dir, lab3)
    assert server.hits == 2 * sent and lab3.client.calls == sent
    assert len(server.problems) == sent and all("other" in p for p in server.problems)


@pytest.mark.parametrize(
    "mode,needle",
    [
        ("500", "HTTP 500"),
        ("slow", "timed out"),
        ("malformed", "malformed reply"),
        ("nochoices", "malformed reply"),
        ("401", "--api-key-env"),
    ],
)
def test_failing_endpoints_end_in_one_line_and_leave_the_artifact(run_dir, api, tmp_path, mode, needle):
    server = api(mode)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    args = vlm_args(run_dir, server.url, tmp_path / "cache", "--timeout", "0.3", "--retries", "2", "--backoff", "0.01")
    proc = subprocess.run(
        [sys.executable, "-m", "neurflow.cli", *args],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NF_TEST_KEY": KEY},
    )
    assert proc.returncode == 2, proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("neurflow: error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert KEY not in proc.stderr + proc.stdout
    assert server.hits == (1 if mode == "401" else 3)  # 1 try + 2 retries, no retry on 401
    # the client's own timeout and backoff bound its tries, whatever the machine's load (the wall time of
    # the process would also count the interpreter's start): 3 tries of at most --timeout 0.3 s each, the
    # endpoint answering one request at a time (a "slow" reply holds it for 1 s)
    assert server.arrivals[-1] - server.arrivals[0] < 10
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # the artifact is unchanged


def test_flaky_endpoint_recovers_with_retries(run_dir, api, tmp_path):
    server = api("flaky")  # every other request fails with 500
    lab = get_labeler(
        "vlm",
        base_url=server.url,
        model=MODEL,
        api_key_env="NF_TEST_KEY",
        cache_dir=tmp_path / "c",
        retries=2,
        backoff=0.01,
    )
    res = label_run(run_dir, lab, check=False, relations=False)
    assert res["labels"] > 0 and server.hits == 2 * res["labels"]


def test_bad_vlm_options(run_dir):
    from neurflow.errors import NeurFlowError

    with pytest.raises(NeurFlowError, match="^base_url: "):
        get_labeler("vlm", base_url="localhost:8000", model=MODEL)
    with pytest.raises(NeurFlowError, match="^model: "):
        get_labeler("vlm", base_url="http://127.0.0.1:9/v1", model=None)
    with pytest.raises(NeurFlowError, match="did you mean vlm"):
        get_labeler("vml")


def _sent_sizes(request) -> list[tuple[int, int]]:
    """(width, height) of every image in a request."""
    out = []
    for p in request["messages"][0]["content"]:
        if p["type"] == "image_url":
            data = base64.b64decode(p["image_url"]["url"].split(",", 1)[1])
            out.append((int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")))
    return out


def test_check_prompt_tells_the_count_as_published(run_dir, api, tmp_path):
    from neurflow.analysis.labels.vlm import BLIND_CHECK_PROMPT, CHECK_PROMPT

    server = api("ok")
    lab = get_labeler("vlm", base_url=server.url, model=MODEL, api_key_env="NF_TEST_KEY", cache_dir=tmp_path / "c")
    res = label_run(run_dir, lab, relations=False)
    checks = [r for r in server.requests if r["messages"][0]["content"][0]["text"].startswith("Here are")]
    assert checks and len(checks) == res["labels"]
    for g, req in zip(res["groups"], checks):
        ck = g["check"]
        assert ck["count_told"] is True and g["evidence"]["check_prompt"] == "published"
        text = req["messages"][0]["content"][0]["text"]
        assert f"Exactly {ck['n_true']} of them show the following" in text
        assert text == CHECK_PROMPT.format(n=len(ck["shown"]), k=ck["n_true"], caption=g["text"])
    # --check-prompt blind: today's prompt, without the count
    blind = api("ok")
    lab = get_labeler(
        "vlm",
        base_url=blind.url,
        model=MODEL,
        api_key_env="NF_TEST_KEY",
        cache_dir=tmp_path / "c2",
        check_prompt="blind",
    )
    res = label_run(run_dir, lab, relations=False)
    checks = [r for r in blind.requests if r["messages"][0]["content"][0]["text"].startswith("Here are")]
    for g, req in zip(res["groups"], checks):
        assert g["check"]["count_told"] is False
        text = req["messages"][0]["content"][0]["text"]
        assert "Exactly" not in text and text == BLIND_CHECK_PROMPT.format(
            n=len(g["check"]["shown"]), caption=g["text"]
        )
    from neurflow.errors import NeurFlowError

    with pytest.raises(NeurFlowError, match="^check_prompt: "):
        get_labeler("vlm", base_url=server.url, model=MODEL, check_prompt="secret")
    with pytest.raises(NeurFlowError, match="^image_size: "):
        get_labeler("vlm", base_url=server.url, model=MODEL, image_size=0)


def test_crops_go_at_the_models_resolution_capped_by_image_size(tmp_path, api, monkeypatch, caplog):
    """A 96-px run: the saved thumbnails are 64 px, the labeler sends the crops at 96 px (as the
    model saw them), or at --image-size; a run that cannot be reopened falls back to the
    thumbnails with one warning."""
    import io

    import torch
    from PIL import Image

    from neurflow import NeurFlow
    from neurflow.analysis.run import Run
    from neurflow.sources.datasets import Dataset

    from conftest import tiny_net

    monkeypatch.setenv("NF_TEST_KEY", KEY)
    torch.manual_seed(0)
    model = tiny_net().eval()
    images = torch.rand(4, 3, 96, 96)
    with torch.no_grad():
        pred = model(images).argmax(1)
    target = int(torch.mode(pred).values)
    NeurFlow(tau=3, top_k=4, ig_steps=4, granularities=(1.0, 0.5)).fit(
        model, images, target, ["head", "block2", "block1", "stem"], out=tmp_path / "run"
    )
    run = Run(tmp_path / "run", quiet=True)
    with Image.open(io.BytesIO(run.png(run.thumbs[0]))) as im:
        assert im.size == (64, 64)  # the report's thumbnails

    def sizes(image_size=None, reopen=True, cache="c"):
        server = api("ok")
        r = Run(tmp_path / "run", quiet=True)
        if reopen:
            r.attach(model, Dataset(images, pred.clone()))
        opts = {} if image_size is None else {"image_size": image_size}
        lab = get_labeler(
            "vlm", base_url=server.url, model=MODEL, api_key_env="NF_TEST_KEY", cache_dir=tmp_path / cache, **opts
        )
        res = label_run(r, lab)
        assert not server.problems, server.problems
        kinds = {r["messages"][0]["content"][0]["text"][:8] for r in server.requests}
        assert {"Here are", "A higher"} <= kinds  # captions, checks and relations all sent images
        return {s for req in server.requests for s in _sent_sizes(req)}, res

    sent, res = sizes()
    assert sent == {(96, 96)} and all(g["evidence"]["image_px"] == 96 for g in res["groups"])
    # the crops are the pool's crops as the model saw them, not upscaled thumbnails
    from neurflow.store import thumbnails

    run2 = Run(tmp_path / "run", quiet=True).attach(model, Dataset(images, pred.clone()))
    crop = run2.thumbs[0]
    assert run2.crop_pngs([crop]) == [thumbnails(run2.pool, [crop], None)[crop]]
    sent, res = sizes(image_size=48, cache="c48")
    assert sent == {(48, 48)} and all(g["evidence"]["image_px"] == 48 for g in res["groups"])
    sent, _ = sizes(image_size=200, cache="c200")
    assert sent == {(96, 96)}  # a cap above the model's size changes nothing
    caplog.set_level(logging.WARNING)
    sent, _ = sizes(reopen=False, cache="cthumb")
    assert sent == {(64, 64)}
    warned = [r for r in caplog.records if "thumbnails" in r.getMessage()]
    assert len(warned) == 1 and "96 px" in warned[0].getMessage()


def test_small_runs_send_their_thumbnails_without_reopening(run_dir, api, tmp_path):
    """A 16-px run: its thumbnails are the model's resolution; nothing is reopened, and
    --image-size 8 halves them."""
    server = api("ok")
    lab = get_labeler(
        "vlm", base_url=server.url, model=MODEL, api_key_env="NF_TEST_KEY", cache_dir=tmp_path / "c", image_size=8
    )
    label_run(run_dir, lab, relations=False)
    assert {s for req in server.requests for s in _sent_sizes(req)} == {(8, 8)}
    server = api("ok")
    lab = get_labeler("vlm", base_url=server.url, model=MODEL, api_key_env="NF_TEST_KEY", cache_dir=tmp_path / "c2")
    label_run(run_dir, lab, relations=False)
    assert {s for req in server.requests for s in _sent_sizes(req)} == {(16, 16)}


def test_label_cli_has_image_size_and_check_prompt(run_dir, api, tmp_path):
    server = api("ok")
    args = vlm_args(run_dir, server.url, tmp_path / "cache", "--image-size", "8", "--check-prompt", "blind")
    assert main([*args, "--no-relations"]) == 0
    assert not server.problems, server.problems
    assert {s for req in server.requests for s in _sent_sizes(req)} == {(8, 8)}
    texts = [r["messages"][0]["content"][0]["text"] for r in server.requests]
    checks = [t for t in texts if t.startswith("Here are")]
    assert checks and not any("Exactly" in t for t in checks)


def test_cli_run_reopens_its_model_and_data_to_send_full_size_crops(tmp_path, api, monkeypatch, caplog):
    """`neurflow run` on 80-px images, then `neurflow label`: the run's recorded model and data are
    reopened and the crops go at 80 px, without a warning."""
    import torch

    from conftest import TINY_NET_PY

    monkeypatch.setenv("NF_TEST_KEY", KEY)
    (tmp_path / "mymodel.py").write_text(TINY_NET_PY)
    torch.manual_seed(0)
    torch.save({"images": torch.rand(6, 3, 80, 80), "labels": torch.arange(6) % 4}, tmp_path / "data.pt")
    out = tmp_path / "out"
    run = ["run", "--model", f"{tmp_path}/mymodel.py:build", "--data", f"{tmp_path}/data.pt", "--target", "1"]
    run += ["--layers", "head,block2,block1", "--tau", "3", "--top-k", "3", "--ig-steps", "4"]
    run += ["--granularities", "1,0.5", "--selection", "labelled", "--out", str(out), "--quiet"]
    assert main(run) == 0
    server = api("ok")
    caplog.set_level(logging.WARNING)
    assert main([*vlm_args(out, server.url, tmp_path / "cache"), "--no-relations"]) == 0
    assert not server.problems, server.problems
    assert server.requests and {s for req in server.requests for s in _sent_sizes(req)} == {(80, 80)}
    assert not [r for r in caplog.records if "thumbnails" in r.getMessage()]


# --- hostile keys, endpoints and answers (issue 23): one line, exit 2, the key nowhere ----------------


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """One run for the tests that must leave it as it was (each checks that it did)."""
    out = tmp_path_factory.mktemp("vlm") / "run"
    tiny_run(out)
    return out


def _files(*dirs) -> dict:
    return {p: p.read_bytes() for d in dirs if d.exists() for p in sorted(d.rglob("*")) if p.is_file()}


def fails_cleanly(argv, capsys, caplog, secret, run, *dirs) -> str:
    """``neurflow ARGV`` (in this process) exits 2 with one error line and leaves ``run`` as it was;
    ``secret`` is nowhere: stdout, stderr, the log, ``run`` and ``dirs`` (a cache).  The line."""
    before = _files(run)
    caplog.set_level(logging.DEBUG)
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("neurflow: error: "), (code, out.err)
    assert _files(run) == before
    blob = out.out + out.err + caplog.text
    blob += "".join(b.decode("utf-8", "replace") for b in _files(run, *dirs).values())
    assert secret not in blob
    return lines[0]


def _nowhere(secret, capsys, caplog, *dirs):
    out = capsys.readouterr()
    blob = out.out + out.err + caplog.text + "".join(b.decode("utf-8", "replace") for b in _files(*dirs).values())
    assert secret not in blob


def test_a_key_with_crlf_is_stripped(run_dir, api, tmp_path, monkeypatch, capsys, caplog):
    """A key read from a file with CRLF endings ends in "\\r\\n": stripped, the endpoint gets the key."""
    server = api("ok")
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("NF_TEST_KEY", f" {KEY}\r\n")
    assert main([*vlm_args(run_dir, server.url, tmp_path / "cache"), "--no-relations"]) == 0
    assert server.requests and not server.problems, server.problems  # "Bearer KEY", nothing around it
    _nowhere(KEY, capsys, caplog, run_dir, tmp_path / "cache")


@pytest.mark.parametrize("secret,bad", [("sk-INNER\rSECRET", "not printable"), ("sk-€-UNICODE-SECRET", "not latin-1")])
def test_a_key_no_header_can_carry_is_refused_without_showing_it(
    shared_run, api, tmp_path, monkeypatch, capsys, caplog, secret, bad
):
    server = api("ok")
    monkeypatch.setenv("NF_TEST_KEY", secret)
    line = fails_cleanly(vlm_args(shared_run, server.url, tmp_path / "c"), capsys, caplog, "SECRET", shared_run)
    assert line.startswith("neurflow: error: --api-key-env: ") and "$NF_TEST_KEY" in line
    assert f"a {len(secret)}-character key" in line and bad in line
    assert server.hits == 0  # refused before anything is sent


@pytest.mark.parametrize("code", [301, 302, 303, 307])
def test_a_redirect_is_not_followed_with_the_key(shared_run, api, tmp_path, monkeypatch, capsys, caplog, code):
    """An endpoint answering 3xx to another origin: not followed (the key would go along, a POST
    would become a GET without the prompt whose answer became every label), one line naming it."""
    other = api("ok")
    port = other.url.split(":")[2].split("/")[0]
    server = api("redirect", location=f"http://localhost:{port}/v1/chat/completions", code=code)
    monkeypatch.setenv("NF_TEST_KEY", KEY)
    line = fails_cleanly(vlm_args(shared_run, server.url, tmp_path / "c"), capsys, caplog, KEY, shared_run)
    assert line.startswith("neurflow: error: --base-url: ") and f"HTTP {code} to localhost:{port}" in line
    assert "not followed" in line and "--base-url" in line
    assert other.hits == 0 and not other.gets  # the other host saw nothing, no key
    assert server.hits == 1  # a redirect is not retried


@pytest.mark.parametrize("mode", ["huge", "huge-length"])
def test_an_answer_past_the_size_cap_is_refused_unread(shared_run, api, tmp_path, monkeypatch, capsys, caplog, mode):
    """A 32 MB answer (streamed without a length, or announced by its Content-Length) used to become
    a 134 MB circuit.json: it is refused at 4 MB and not read further."""
    server = api(mode)
    monkeypatch.setenv("NF_TEST_KEY", KEY)
    args = [*vlm_args(shared_run, server.url, tmp_path / "c"), "--no-check", "--no-relations"]
    line = fails_cleanly(args, capsys, caplog, KEY, shared_run)
    assert "expected an answer of at most 4 MB" in line and "not read further" in line
    assert server.hits == 1


def test_a_long_reply_is_cut_before_it_is_stored(run_dir, api, tmp_path, capsys, caplog):
    server = api("long")  # a 100 000-character caption, under the size cap
    caplog.set_level(logging.WARNING)
    size = (run_dir / "circuit.json").stat().st_size
    assert main([*vlm_args(run_dir, server.url, tmp_path / "cache"), "--no-check", "--no-relations"]) == 0
    texts = [g.label["text"] for l in load(run_dir).layers for g in l.groups if g.label]
    assert texts and all(len(t) == 2001 and t == "a" * 2000 + "…" for t in texts)
    assert [r for r in caplog.records if "cut to 2000" in r.getMessage()]
    assert (run_dir / "circuit.json").stat().st_size < size + len(texts) * 5000


def test_the_key_is_removed_from_what_the_endpoint_sends_back(run_dir, api, tmp_path, capsys, caplog):
    """An endpoint that echoes the request's headers: its answer is stored, the key is not."""
    server = api("echo")
    caplog.set_level(logging.DEBUG)
    assert main([*vlm_args(run_dir, server.url, tmp_path / "cache"), "--no-check", "--no-relations"]) == 0
    texts = {g.label["text"] for l in load(run_dir).layers for g in l.groups if g.label}
    assert texts == {"I was asked with Bearer ***"}
    _nowhere(KEY, capsys, caplog, run_dir, tmp_path / "cache")


def test_an_error_body_never_shows_part_of_the_key(shared_run, api, tmp_path, monkeypatch, capsys, caplog):
    """The key straddles the first 200 bytes of the body: removed before the cut, no prefix left."""
    server = api("500-cut")
    monkeypatch.setenv("NF_TEST_KEY", KEY)
    args = [*vlm_args(shared_run, server.url, tmp_path / "c"), "--retries", "0"]
    line = fails_cleanly(args, capsys, caplog, KEY[:8], shared_run)
    assert "HTTP 500: " + "x" * 190 + "*** was" in line


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--backoff", "-1"),
        ("--backoff", "nan"),
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--timeout", "1e300"),
        ("--retries", "1000"),
    ],
)
def test_bad_numeric_options(shared_run, api, tmp_path, monkeypatch, capsys, flag, value):
    server = api("ok")
    monkeypatch.setenv("NF_TEST_KEY", KEY)
    line = one_line([*vlm_args(shared_run, server.url, tmp_path / "c"), flag, value], capsys)
    assert line.startswith(f"neurflow: error: {flag}: expected ")
    assert server.hits == 0


def test_a_base_url_with_surrounding_spaces_works(run_dir, api, tmp_path):
    server = api("ok")
    assert main([*vlm_args(run_dir, f" {server.url} ", tmp_path / "cache"), "--no-relations"]) == 0
    assert server.requests and not server.problems, server.problems


@pytest.mark.parametrize(
    "url,needle",
    [
        ("http://127.0.0.1:{port}/v 1", "space or control character"),
        ("http://127.0.0.1:{port}/v1\t/x", "space or control character"),
        ("http://user:pw-SECRET@127.0.0.1:{port}/v1", "credentials in the URL"),
        ("http://127.0.0.1:{port}/v1?x=1", "query or fragment"),
        ("http://127.0.0.1:99999/v1", "bad host or port"),
        ("http://[::1/v1", "bad host or port"),
        ("http:///v1", "with a host"),
        ("http://127.0.0.1:{port}/vé1", "non-ASCII"),
    ],
)
def test_bad_base_urls(shared_run, api, tmp_path, monkeypatch, capsys, caplog, url, needle):
    server = api("ok")
    monkeypatch.setenv("NF_TEST_KEY", KEY)
    url = url.format(port=server.url.split(":")[2].split("/")[0])
    line = fails_cleanly(vlm_args(shared_run, url, tmp_path / "c"), capsys, caplog, "pw-SECRET", shared_run)
    assert line.startswith("neurflow: error: --base-url: expected an http(s) URL") and needle in line
    assert server.hits == 0


@pytest.mark.parametrize("mode", ["drip-head", "drip-body"])
def test_a_slow_drip_endpoint_times_out_per_try(run_dir, api, tmp_path, mode):
    """One byte every 50 ms, in the headers or the body: each socket read succeeds, so a timeout per
    read never fired; each try now ends --timeout seconds after it began (by the endpoint's clock)."""
    server = api(mode)
    args = vlm_args(run_dir, server.url, tmp_path / "cache", "--timeout", "1", "--retries", "1", "--backoff", "0")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "neurflow.cli", *args],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "NF_TEST_KEY": KEY},
            timeout=180,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the client never gave up on an endpoint that sends one byte at a time")
    errors = [l for l in proc.stderr.splitlines() if l.startswith("neurflow: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no usable answer after 2 tries: timed out" in errors[0]
    assert server.hits == 2 and len(server.ends) == 2 and all(t < 4 for t in server.ends), server.ends


def test_no_proxy_for_a_loopback_endpoint(run_dir, api, tmp_path, monkeypatch):
    """An http_proxy in the environment would be handed the key (and the crops) for an endpoint on
    this machine, which it cannot reach; other endpoints still go through it."""
    proxy = api("ok")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, proxy.url.rsplit("/", 1)[0])
    server = api("ok")
    assert main([*vlm_args(run_dir, server.url, tmp_path / "cache"), "--no-relations"]) == 0
    assert proxy.hits == 0 and server.requests and not server.problems
    # an endpoint elsewhere is asked through the proxy (which answers here)
    lab = get_labeler(
        "vlm", base_url="http://vlm.invalid/v1", model=MODEL, api_key_env="NF_TEST_KEY", cache_dir=tmp_path / "c2"
    )
    assert lab.client.complete([{"type": "text", "text": "Here are"}])
    assert proxy.hits == 1


@pytest.mark.parametrize("mode", ["garbage", "truncated", "deep"])
def test_answers_that_are_not_http_or_json_are_retried_then_one_line(
    shared_run, api, tmp_path, monkeypatch, capsys, caplog, mode
):
    server = api(mode)
    monkeypatch.setenv("NF_TEST_KEY", KEY)
    args = [*vlm_args(shared_run, server.url, tmp_path / "c"), "--retries", "1", "--backoff", "0"]
    line = fails_cleanly(args, capsys, caplog, KEY, shared_run)
    assert "no usable answer after 2 tries: " in line and server.hits == 2
    want = {
        "garbage": "not an HTTP answer: HELLO ***",
        "truncated": "not an HTTP answer: IncompleteRead",
        "deep": "malformed reply",
    }
    assert want[mode] in line


def test_a_damaged_cache_entry_is_asked_again(run_dir, api, tmp_path):
    server = api("ok")
    args = [*vlm_args(run_dir, server.url, tmp_path / "cache"), "--no-relations"]
    assert main(args) == 0
    first, sent = load(run_dir), server.hits
    entries = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(entries) == sent
    for i, p in enumerate(entries):
        p.write_text(["[1]", '{"reply": 5}', '"text"', '{"reply": ""}'][i % 4])
    assert main(args) == 0
    assert server.hits == 2 * sent and load(run_dir).layers == first.layers


def test_check_answers_that_are_not_whole_numbers():
    from neurflow.analysis.labels.vlm import parse_numbers
    from neurflow.errors import NeurFlowError

    assert parse_numbers('Images [1, "3", 4.0] match', 5) == [0, 2, 3]
    for reply in ("[1e400]", "[1.5, 2]", "[true]", '["one"]'):
        with pytest.raises(NeurFlowError, match="^labeler answer: "):
            parse_numbers(reply, 5)
