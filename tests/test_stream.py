"""Data sources that stream (sources/stream.py) and the prediction cache (store/predictions.py):
a folder is listed, not decoded; its circuit equals the one of the same images given as a tensor;
a second class reads the cached predictions and decodes only its own class images."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import neurflow
from neurflow.errors import NeurFlowError
from neurflow.method.predictions import CACHE_ENV, cache_root
from neurflow.sources import datasets
from neurflow.sources.datasets import load_data
from neurflow.sources.stream import TorchImages, as_source

from conftest import tiny_net

LAYERS = ["head", "block2", "block1", "stem"]
SETTINGS = dict(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5), data_workers=0)


def folder(path, n=24, size=16, seed=0, broken=()):
    """An ImageFolder of ``n`` random PNGs in two classes (``broken``: indices written as junk)."""
    rng = np.random.RandomState(seed)
    for i in range(n):
        d = path / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"{i:03d}.png"
        if i in broken:
            f.write_bytes(b"\x89PNG junk")
        else:
            Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)).save(f)
    return path


@pytest.fixture
def counting(monkeypatch):
    """Counts the image files decoded (in this process: the runs below use ``data_workers=0``)."""
    seen = []
    real = datasets.decode_file

    def decode(f, fn, channels):
        seen.append(f.name)
        return real(f, fn, channels)

    monkeypatch.setattr(datasets, "decode_file", decode)
    return seen


def _without_provenance_of_data(d):
    meta = json.loads((d / "circuit.json").read_text())
    for key in ("timings_s", "data_hash", "files", "data_spec"):
        meta["meta"].pop(key, None)
    for layer in meta["layers"]:
        layer.pop("seconds")  # timings aside
    return meta


def _targets(model, images):
    """The two classes ``model`` predicts most often on ``images``, after its head's bias is moved
    so that they split the images about evenly (a random tiny net predicts one class for all)."""
    with torch.no_grad():
        out = model(images)
        first, second = out.mean(0).argsort(descending=True)[:2].tolist()
        model.head.bias[first] -= float((out[:, first] - out[:, second]).median())
        pred = model(images).argmax(1)
    return torch.bincount(pred, minlength=4).argsort(descending=True)[:2].tolist()


def test_a_folder_run_is_byte_identical_to_the_same_images_as_a_tensor(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    data = load_data(str(folder(tmp_path / "imgs")), "none")
    tensor = data.images.decoded()
    torch.manual_seed(0)
    model = tiny_net().eval()
    target = _targets(model, tensor)[0]
    neurflow.NeurFlow(**SETTINGS).fit(model, data.images, target, LAYERS, out=tmp_path / "folder")
    neurflow.NeurFlow(**SETTINGS).fit(model, tensor, target, LAYERS, out=tmp_path / "tensor")
    assert _without_provenance_of_data(tmp_path / "folder") == _without_provenance_of_data(tmp_path / "tensor")
    assert (tmp_path / "folder/arrays.npz").read_bytes() == (tmp_path / "tensor/arrays.npz").read_bytes()
    # a folder's identity is its listing, a tensor's its pixels
    assert data.images.identity().startswith("files:") and as_source(tensor).cache_key() is None


def test_another_class_reads_the_cache_and_decodes_only_its_class_images(tmp_path, monkeypatch, counting):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = folder(tmp_path / "imgs", n=30)
    torch.manual_seed(0)
    model = tiny_net().eval()
    first, second = _targets(model, load_data(str(root), "none").images.decoded())
    counting.clear()
    nf = neurflow.NeurFlow(**SETTINGS).fit(model, load_data(str(root), "none").images, first, LAYERS)
    assert len(counting) == 1 + 30 + nf.circuit_.provenance.n_class_images  # the probe, the pass, the class
    cached = list((tmp_path / "cache" / "predictions").glob("*.npz"))
    assert len(cached) == 1
    with np.load(cached[0]) as z:
        assert z["logits"].dtype == np.float16 and z["logits"].shape == (30, 4)
        with torch.no_grad():
            exact = model(load_data(str(root), "none").images.decoded()).argmax(1).numpy()
        assert z["classes"].tolist() == exact.tolist()  # the float32 argmax, not the float16 one
    counting.clear()
    nf2 = neurflow.NeurFlow(**SETTINGS).fit(model, load_data(str(root), "none").images, second, LAYERS)
    assert len(counting) == 1 + nf2.circuit_.provenance.n_class_images  # no second pass over the data
    # the cached run selects exactly what an uncached one does
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "other-cache"))
    nf3 = neurflow.NeurFlow(**SETTINGS).fit(model, load_data(str(root), "none").images, second, LAYERS)
    assert nf3.circuit_.provenance.run_hash == nf2.circuit_.provenance.run_hash


def test_a_damaged_cache_entry_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = folder(tmp_path / "imgs")
    torch.manual_seed(0)
    model = tiny_net().eval()
    target = _targets(model, load_data(str(root), "none").images.decoded())[0]
    a = neurflow.NeurFlow(**SETTINGS).fit(model, load_data(str(root), "none").images, target, LAYERS).circuit_
    (entry,) = (tmp_path / "cache" / "predictions").glob("*.npz")
    entry.write_bytes(b"damaged")
    b = neurflow.NeurFlow(**SETTINGS).fit(model, load_data(str(root), "none").images, target, LAYERS).circuit_
    assert a.provenance.run_hash == b.provenance.run_hash and np.load(entry)["classes"].shape == (24,)


def test_a_folder_changed_during_the_run_is_refused(tmp_path, monkeypatch, counting):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = folder(tmp_path / "imgs")
    data = load_data(str(root), "none")
    real = datasets.decode_file

    def rewriting(f, fn, channels):
        if len(counting) == 5:  # mid-pass, another process rewrites a file
            Image.new("RGB", (16, 16)).save(root / "a" / "001.png")
        counting.append(f.name)
        return real(f, fn, channels)

    monkeypatch.setattr(data.images, "decode", lambda f: rewriting(f, datasets.plain_transform, 3))
    torch.manual_seed(0)
    with pytest.raises(NeurFlowError, match="does not change during the run"):
        neurflow.NeurFlow(**SETTINGS).fit(tiny_net().eval(), data.images, 0, LAYERS)


def test_unreadable_files_mid_stream_are_skipped_and_counted_also_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = folder(tmp_path / "imgs", broken=(7, 12))
    torch.manual_seed(0)
    model = tiny_net().eval()
    data = load_data(str(root), "none")
    target = _targets(model, data.images.decoded())[0]
    for _ in range(2):  # computed, then read from the cache: the same count
        prov = neurflow.NeurFlow(**SETTINGS).fit(model, load_data(str(root), "none").images, target, LAYERS)
        prov = prov.circuit_.provenance
        assert prov.data_skipped == 2 and prov.n_images == 22 and prov.data_shape[0] == 22


def test_decoding_workers_give_the_same_predictions(tmp_path):
    from neurflow.method.probe import logits

    data = load_data(str(folder(tmp_path / "imgs", broken=(3,))), "none")
    torch.manual_seed(0)
    model = tiny_net().eval()
    inline = logits(model, data.images, batch_size=5, workers=0)
    spread = logits(model, data.images, batch_size=5, workers=2)
    bad = data.files.index("a/003.png")
    assert torch.isnan(inline[bad]).all() and data.images.unreadable == {bad}
    assert torch.isfinite(inline[[i for i in range(24) if i != bad]]).all()
    assert torch.equal(torch.nan_to_num(inline, 7.0), torch.nan_to_num(spread, 7.0))


class Pairs(torch.utils.data.Dataset):
    """A user's map-style dataset: (image, label) items, no ``targets`` attribute."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def test_a_torch_dataset_is_taken_as_images_and_labels(tmp_path):
    torch.manual_seed(0)
    images, labels = torch.rand(12, 3, 16, 16), torch.tensor([0, 1, 2] * 4)
    model = tiny_net().eval()
    cfg = dict(SETTINGS, selection="labelled")
    a = neurflow.NeurFlow(**cfg).fit(model, Pairs(images, labels), 1, LAYERS).circuit_
    b = neurflow.NeurFlow(**cfg).fit(model, images, 1, LAYERS, labels=labels).circuit_
    assert a.provenance.run_hash == b.provenance.run_hash and a.layers[1].nodes.keys() == b.layers[1].nodes.keys()
    assert isinstance(as_source(Pairs(images, labels)), TorchImages)
    with pytest.raises(NeurFlowError, match="^images"):
        neurflow.NeurFlow(**SETTINGS).fit(model, [1, 2, 3], 1, LAYERS)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_a_pt_file_is_memory_mapped(tmp_path):
    """Loading a 58 MB tensor file reads (almost) none of it: its pages are read as images are."""
    torch.save({"images": torch.ones(100, 3, 224, 224), "labels": torch.zeros(100).long()}, tmp_path / "d.pt")
    before = _rss_mb()
    data = load_data(str(tmp_path / "d.pt"))
    assert _rss_mb() - before < 20 and data.images.shape == (100, 3, 224, 224)
    assert float(data.images.take([99])[0].mean()) == 1.0


def test_the_cache_directory_setting_and_its_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" and cache_root(str(tmp_path / "flag")) == tmp_path / "flag"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "neurflow"
    with pytest.raises(NeurFlowError, match="^data_workers"):
        neurflow.NeurFlowConfig(data_workers=-1)


def test_plan_prints_the_work_and_computes_no_circuit(tmp_path, monkeypatch, capsys):
    """``neurflow run --plan``: the counts a run will have (checked against the run itself)."""
    from neurflow.cli.main import main

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = folder(tmp_path / "imgs", n=20)
    (tmp_path / "m.py").write_text("from conftest import tiny_net\n\ndef build():\n    return tiny_net()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["run", "--model", f"{tmp_path}/m.py:build", "--data", str(root), "--transform", "none",
            "--selection", "labelled", "--target", "1", "--layers", ",".join(LAYERS), "--tau", "3",
            "--top-k", "6", "--ig-steps", "8", "--granularities", "1,0.5", "--data-workers", "0",
            "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    assert main([*argv, "--plan"]) == 0
    shown = capsys.readouterr().out
    assert not (tmp_path / "out").exists()
    lines = dict(l.split(": ", 1) for l in shown.splitlines() if ": " in l)
    assert lines["images found"] == "20" and lines["class images (labelled as 1)"] == "10"
    assert main(argv) == 0
    c = neurflow.load(tmp_path / "out")
    assert int(lines["crops"]) == c.provenance.n_crops == 10 * 10  # 1 + 9 windows per 16-px image
    assert lines["IG evaluations of the first layer pair (node, crop, step)"].startswith(f"{6 * 8} (1 node x 6")
    assert "estimated peak memory" in lines and "MB" in lines["estimated peak memory"]


def shards(path, root, per_shard=12):
    """The images of the folder ``root`` written as WebDataset tar shards (key.png + key.cls)."""
    import io
    import tarfile

    data = load_data(str(root), "none")
    names = []
    for s in range(0, len(data.files), per_shard):
        name = path / f"part-{s // per_shard:03d}.tar"
        with tarfile.open(name, "w") as tar:
            for i in range(s, min(s + per_shard, len(data.files))):
                key = f"sample{i:04d}"
                for ext, payload in (("png", (root / data.files[i]).read_bytes()), ("cls", b"%d" % data.labels[i])):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        names.append(name)
    return names


def test_webdataset_shards_give_the_folders_images_labels_and_circuit(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = folder(tmp_path / "imgs")
    (tmp_path / "wds").mkdir()
    shards(tmp_path / "wds", root)
    spec = f"wds:{tmp_path}/wds/part-{{000..001}}.tar"
    wds, files = load_data(spec, "none"), load_data(str(root), "none")
    assert len(wds.images) == 24 and torch.equal(wds.labels, files.labels)
    assert torch.equal(wds.images.decoded(), files.images.decoded())
    assert wds.files[0] == "part-000.tar:sample0000" and wds.images.identity().startswith("shards:")
    torch.manual_seed(0)
    model = tiny_net().eval()
    target = _targets(model, files.images.decoded())[0]
    neurflow.NeurFlow(**SETTINGS).fit(model, wds.images, target, LAYERS, out=tmp_path / "a")
    neurflow.NeurFlow(**SETTINGS).fit(model, files.images, target, LAYERS, out=tmp_path / "b")
    assert (tmp_path / "a/arrays.npz").read_bytes() == (tmp_path / "b/arrays.npz").read_bytes()


def test_webdataset_patterns_that_match_nothing_or_miss_a_shard_are_one_line(tmp_path):
    root = folder(tmp_path / "imgs", n=4)
    (tmp_path / "wds").mkdir()
    shards(tmp_path / "wds", root, per_shard=4)
    with pytest.raises(NeurFlowError, match="matches no file"):
        load_data(f"wds:{tmp_path}/nothing-{{0..3}}.tar")
    with pytest.raises(NeurFlowError, match="1 shard missing"):
        load_data(f"wds:{tmp_path}/wds/part-{{000..001}}.tar")


def hf_dataset(path, root, with_image=True):
    """The images of the folder ``root`` as a Hugging Face dataset saved with ``save_to_disk``."""
    import datasets  # the hf extra, installed with the tests (Makefile)

    data = load_data(str(root), "none")
    rows = {"label": [int(v) for v in data.labels]}
    feats = {"label": datasets.ClassLabel(names=data.class_names)}
    if with_image:
        rows["image"] = [str(root / f) for f in data.files]
        feats["image"] = datasets.Image()
    else:
        rows["path"] = [str(root / f) for f in data.files]
        feats["path"] = datasets.Value("string")
    datasets.Dataset.from_dict(rows, features=datasets.Features(feats)).save_to_disk(str(path))
    return path


def test_an_hf_dataset_gives_the_folders_images_labels_names_and_circuit(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = folder(tmp_path / "imgs")
    hf_dataset(tmp_path / "hf", root)
    hf, files = load_data(f"hf:{tmp_path}/hf", "none"), load_data(str(root), "none")
    assert len(hf.images) == 24 and torch.equal(hf.labels, files.labels) and hf.class_names == ["a", "b"]
    assert torch.equal(hf.images.decoded(), files.images.decoded())
    assert hf.images.cache_key().startswith("hf:") and hf.info["image_column"] == "image"
    torch.manual_seed(0)
    model = tiny_net().eval()
    target = _targets(model, files.images.decoded())[0]
    neurflow.NeurFlow(**SETTINGS).fit(model, hf.images, target, LAYERS, out=tmp_path / "a")
    neurflow.NeurFlow(**SETTINGS).fit(model, files.images, target, LAYERS, out=tmp_path / "b")
    assert (tmp_path / "a/arrays.npz").read_bytes() == (tmp_path / "b/arrays.npz").read_bytes()


def test_an_hf_dataset_without_an_image_column_names_its_columns(tmp_path):
    root = folder(tmp_path / "imgs", n=4)
    hf_dataset(tmp_path / "hf", root, with_image=False)
    with pytest.raises(NeurFlowError, match=r"^image_column.*columns: label \(ClassLabel\), path \(Value\)"):
        load_data(f"hf:{tmp_path}/hf", "none")
    with pytest.raises(NeurFlowError, match="^data.*offline"):
        load_data(f"hf:{tmp_path}/no-such-dataset")


def test_the_cli_runs_on_hf_data_with_chosen_columns_and_reopens_it(tmp_path, monkeypatch, capsys):
    from neurflow.cli.main import main

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    hf_dataset(tmp_path / "hf", folder(tmp_path / "imgs", n=12))
    (tmp_path / "m.py").write_text("from conftest import tiny_net\n\ndef build():\n    return tiny_net()\n")
    argv = ["run", "--model", f"{tmp_path}/m.py:build", "--data", f"hf:{tmp_path}/hf", "--transform", "none",
            "--image-column", "image", "--label-column", "label", "--selection", "labelled", "--target", "1",
            "--layers", ",".join(LAYERS), "--tau", "3", "--top-k", "6", "--ig-steps", "8", "--granularities", "1,0.5",
            "--data-workers", "0", "--out", str(tmp_path / "out"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((tmp_path / "out/circuit.json").read_text())["meta"]
    assert meta["data_columns"] == ["image", "label"] and meta["n_class_images"] == 6
    capsys.readouterr()
    assert main(["debug", str(tmp_path / "out"), "--image", "7", "--json"]) == 0  # reopens the hf: data
    assert json.loads(capsys.readouterr().out)["image"]["label"] == 1
