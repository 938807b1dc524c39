#!/usr/bin/env python
"""Benchmark: data that streams (issue 25).  Folders of N JPEGs (made here from the offline photos of
scikit-image, random crops resized to 256-500 px; ImageFolder layout, class ``000`` always holds
the same 40 images, the rest spread over 9 other classes), then:

(a) **peak RSS of ``neurflow run``** (its own process: ``--model torchvision:resnet18 --selection
    labelled --target 0 --layers fc,layer4.1,layer4.0 --tau 4 --top-k 10``) at each size, and the
    ratio of the largest to the smallest: memory must not grow with the dataset;
(b) **the prediction pass's images/s** (``neurflow.method.probe.logits`` over the folder source,
    resnet18, batch 64, the default decoding workers) against a plain
    ``torchvision.datasets.ImageFolder`` + ``DataLoader`` loop with the same transform, workers and
    batch size and the same model; and the two decode-only loops (no model: the decode-bound limit);
(c) **a second class on the same folder**: ``--selection predicted``, class A then class B with
    the prediction cache: B's wall time and the images it decoded (only its class images).

    .venv/bin/python benchmarks/bench_data.py                       # sizes 1000,5000,20000
    .venv/bin/python benchmarks/bench_data.py --sizes 200,1000 --json benchmarks/results/data-small.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
RUN = ["--selection", "labelled", "--target", "0", "--layers", "fc,layer4.1,layer4.0", "--tau", "4", "--top-k", "10"]


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs under ``root`` (kept between invocations: made once per size)."""
    from PIL import Image
    from skimage import data as skd

    if (root / ".done").is_file():
        return root
    rng = np.random.RandomState(seed)
    photos = []
    for name in PHOTOS:
        a = getattr(skd, name)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        photos.append(Image.fromarray(a.astype(np.uint8)))
    for i in range(n):
        cls = 0 if i < 40 else 1 + i % 9
        d = root / f"{cls:03d}"
        d.mkdir(parents=True, exist_ok=True)
        img = photos[rng.randint(len(photos))]
        w, h = img.size
        s = rng.randint(min(w, h) // 2, min(w, h) + 1)
        x, y = rng.randint(w - s + 1), rng.randint(h - s + 1)
        side = int(rng.randint(256, 501))
        img.crop((x, y, x + s, y + s)).resize((side, int(side * rng.uniform(0.75, 1.0)))).save(
            d / f"{i:06d}.jpg", quality=90
        )
    (root / ".done").write_text("")
    return root


def peak_rss_of_run(folder: Path, out: Path) -> float:
    """Peak RSS (MB) of one ``neurflow run`` process on ``folder``."""
    cmd = [sys.executable, "-c",
           "import resource, sys; from neurflow.cli.main import main; rc = main(sys.argv[1:]); "
           "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)",
           "run", "--model", "torchvision:resnet18", "--data", str(folder), *RUN, "--out", str(out), "--quiet",
           "--overwrite"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"neurflow run failed on {folder}:\n{proc.stderr[-2000:]}")
    line = [l for l in proc.stderr.splitlines() if l.startswith("peak_rss_kb")][-1]
    return int(line.split()[1]) / 1024


def throughput(folder: Path, workers: int, batch: int, limit: int) -> dict:
    """(b): images/s of our prediction pass and of the plain torchvision loop, with and without the model."""
    import torch
    import torchvision
    from torchvision import transforms as T

    from neurflow.method.probe import logits
    from neurflow.sources.datasets import load_data
    from neurflow.sources.stream import FolderImages

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406),
                                                                               (0.229, 0.224, 0.225))])  # fmt: skip
    plain = torchvision.datasets.ImageFolder(str(folder), tf)
    plain = torch.utils.data.Subset(plain, range(min(limit, len(plain))))
    ours = load_data(str(folder)).images
    order = np.arange(min(limit, len(ours)))

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return len(order) / (time.perf_counter() - t)

    def plain_loop(with_model: bool):
        loader = torch.utils.data.DataLoader(plain, batch_size=batch, num_workers=workers)
        with torch.no_grad():
            for x, _ in loader:
                if with_model:
                    model(x)

    def ours_decode():
        for _ in ours.batches(batch, workers, indices=order):
            pass

    def ours_pass():  # the first `limit` images of the same folder, as a source
        sub = FolderImages(ours.root, ours.files[: len(order)], None, ours.decode, ours.how)
        logits(model, sub, batch_size=batch, workers=workers)

    return {
        "images": len(order),
        "workers": workers,
        "batch": batch,
        "decode_only_ips": {"ours": timed(ours_decode), "plain": timed(lambda: plain_loop(False))},
        "with_model_ips": {"ours": timed(ours_pass), "plain": timed(lambda: plain_loop(True))},
    }


def second_class(folder: Path, cache: Path) -> dict:
    """(c): class A then class B, predicted selection, one cache: B decodes only its class images."""
    import torch
    import torchvision

    import neurflow
    from neurflow.sources.datasets import load_data

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    os.environ["NEURFLOW_CACHE"] = str(cache)
    settings = dict(tau=4, top_k=5, ig_steps=8, granularities=(1.0, 0.5))
    layers = ["fc", "layer4.1", "layer4.0"]
    out: dict = {}
    first = None
    for which in ("first", "second"):
        data = load_data(str(folder))
        seen: list = []
        real = data.images.decode
        data.images.decode = lambda f, real=real, seen=seen: (seen.append(f), real(f))[1]
        if first is None:  # the class most predicted on a few images
            with torch.no_grad():
                target = first = int(model(data.images.take(range(32))[0]).argmax(1).mode().values)
        else:  # the most predicted other class (from the cached predictions)
            from neurflow.method.predictions import cache_root

            (entry,) = (cache_root() / "predictions").glob("*.npz")
            counts = np.bincount(np.load(entry)["classes"].clip(0), minlength=1000)
            counts[first] = 0
            target = int(counts.argmax())
        t = time.perf_counter()
        nf = neurflow.NeurFlow(**settings).fit(model, data.images, target, layers)
        out[which] = {
            "target": target,
            "seconds": round(time.perf_counter() - t, 2),
            "decoded": len(seen),
            "class_images": nf.circuit_.provenance.n_class_images,
            "images": len(data.images),
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,5000,20000")
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "neurflow-bench-data"))
    p.add_argument("--throughput-images", type=int, default=1000, help="images timed in (b)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from neurflow.sources.stream import default_workers

    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(args.root)
    result: dict = {"sizes": sizes, "peak_rss_mb": {}}
    for n in sizes:
        folder = make_folder(root / f"jpegs-{n}", n)
        result["peak_rss_mb"][str(n)] = round(peak_rss_of_run(folder, root / f"run-{n}"), 1)
        print(f"(a) neurflow run on {n} JPEGs: peak RSS {result['peak_rss_mb'][str(n)]} MB", flush=True)
    lo, hi = result["peak_rss_mb"][str(sizes[0])], result["peak_rss_mb"][str(sizes[-1])]
    result["rss_ratio_largest_to_smallest"] = round(hi / lo, 3)
    print(f"(a) ratio {sizes[-1]} / {sizes[0]} images: {hi / lo:.3f}x (target <= 1.25x)")
    tp = throughput(root / f"jpegs-{sizes[-1]}", default_workers(), 64, args.throughput_images)
    result["throughput"] = tp
    for k in ("decode_only_ips", "with_model_ips"):
        r = tp[k]["ours"] / tp[k]["plain"]
        tp[k]["ratio"] = round(r, 3)
        print(f"(b) {k}: ours {tp[k]['ours']:.1f} img/s, plain ImageFolder+DataLoader {tp[k]['plain']:.1f} img/s:"
              f" {r:.2f}x (target >= 0.9x)")  # fmt: skip
    cache = root / f"cache-{sizes[0]}"
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    sc = second_class(root / f"jpegs-{sizes[0]}", cache)
    result["second_class"] = sc
    for which in ("first", "second"):
        r = sc[which]
        print(f"(c) {which} class {r['target']}: {r['seconds']} s, decoded {r['decoded']} of {r['images']} images "
              f"({r['class_images']} class images)")  # fmt: skip
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
