#!/usr/bin/env python
"""GPU benchmark (issue 13): ours vs the published algorithm on the same device.

Workload: torchvision ResNet50, seeded random weights with random BatchNorm statistics
(``bn-perturbed``, as ``bench_core.make_workload``), 50 random images at 224 px, the paper's layer
list (``neurflow.sources.torchvision.PAPER_LAYERS["resnet50"]``), tau 16, k 50, 50 IG steps.

* ours: ``NeurFlow(...).fit(..., device)``, the whole pipeline, timed with the device synchronised;
* baseline: the published algorithm (whole pool on the device, netA re-run per layer, one captum
  ``IntegratedGradients`` call per node over its top-k crops) on *our* node sets layer by layer,
  capped at ``--budget`` seconds per layer: the time of the nodes done is extrapolated to all the
  layer's nodes (per-node cost is uniform within a layer), and the core sets of the nodes done are
  compared with ours;
* ``neurflow demo --device DEVICE``, timed as a user runs it.

``--smoke`` runs a tiny version on the CPU (CI): 64 px, 6 images, three layers, tau 4, k 10, 8 steps.
Writes ``--json`` (default ``$OUT/gpu.json`` when ``$OUT`` is set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "benchmarks")):
    if path not in sys.path:
        sys.path.insert(0, path)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def workload(smoke: bool):
    import torch
    import torchvision
    from bench_core import perturb_bn

    from neurflow.sources.torchvision import PAPER_LAYERS

    torch.manual_seed(0)
    arch = "resnet18" if smoke else "resnet50"
    model = getattr(torchvision.models, arch)(weights=None).eval()
    perturb_bn(model)
    size, n = (64, 6) if smoke else (224, 50)
    images = torch.randn(n, 3, size, size)
    layers = ["fc", "layer4.1", "layer4.0", "layer3.1"] if smoke else PAPER_LAYERS["resnet50"]
    settings = dict(tau=4, top_k=10, ig_steps=8) if smoke else dict(tau=16, top_k=50, ig_steps=50)
    with torch.no_grad():
        target = int(model(images).argmax(1).mode().values)
    return model, images, target, layers, settings


def run_ours(device: str, smoke: bool, precision: str = "fp32") -> dict:
    import neurflow

    model, images, target, layers, settings = workload(smoke)
    sync(device)
    t0 = time.perf_counter()
    c = neurflow.NeurFlow(device=device, precision=precision, **settings).fit(model, images, target, layers).circuit_
    sync(device)
    wall = time.perf_counter() - t0
    cores = {l.name: {int(n): list(node.core) for n, node in l.nodes.items()} for l in c.layers}
    return {"wall_s": wall, "timings": dict(c.meta["timings_s"]), "cores": cores, "n_crops": c.meta["n_crops"]}


def run_baseline(device: str, smoke: bool, cores: dict, budget: float, batch_size: int = 64) -> dict:
    import torch
    from captum.attr import IntegratedGradients

    from neurflow._state import preserved
    from neurflow.method.crops import CropPool
    from neurflow.neurons import response
    from neurflow.slicing import LayerGraph

    model, images, target, layers, s = workload(smoke)
    model = model.to(device)
    graph = LayerGraph(model, layers)
    sync(device)
    t0 = time.perf_counter()
    out = {"layers": {}, "agreement": {}}
    with preserved(model, freeze=True):
        with torch.no_grad():
            logits = torch.cat(
                [model(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
            )
        cp = CropPool(images[(logits.argmax(1) == target).cpu()], (1.0, 0.5, 0.25))
        pool = cp.get(range(len(cp))).to(device)
        for upper, lower in zip(layers, layers[1:]):
            sync(device)
            t = time.perf_counter()
            prefix, segment = graph.prefix(lower, upper), graph.segment(lower, upper)
            with torch.no_grad():
                prev = torch.cat([prefix(pool[i : i + batch_size])[0] for i in range(0, len(pool), batch_size)])
                acts = torch.cat([response(segment(prev[i : i + batch_size])) for i in range(0, len(prev), batch_size)])
            ig = IntegratedGradients(lambda x, seg=segment: response(seg(x)))
            nodes, done, same = sorted(cores[upper]), 0, 0
            for n in nodes:
                data = prev[torch.topk(acts[:, n], s["top_k"]).indices].clone().requires_grad_(True)
                attr = ig.attribute(data, baselines=data * 0, target=n, n_steps=s["ig_steps"], internal_batch_size=128)
                imp = response(attr.detach()).abs().mean(0)
                core = [int(j) for j in torch.argsort(-imp.cpu(), stable=True)[: s["tau"]]]
                same += core == list(cores[upper][n])
                done += 1
                sync(device)
                if time.perf_counter() - t > budget:
                    break
            sync(device)
            spent = time.perf_counter() - t
            out["layers"][upper] = {"nodes": len(nodes), "done": done, "seconds": spent,
                                    "extrapolated_s": spent * len(nodes) / done}  # fmt: skip
            out["agreement"][upper] = {"compared": done, "identical_ordered": same}
    out["wall_s_measured"] = time.perf_counter() - t0
    out["wall_s_extrapolated"] = sum(v["extrapolated_s"] for v in out["layers"].values())
    return out


def agreement(ref: dict, other: dict) -> dict:
    """Per layer: nodes whose ordered core sets are identical to ``ref``'s."""
    out = {}
    for layer, nodes in ref.items():
        same = sum(other.get(layer, {}).get(n) == core for n, core in nodes.items())
        out[layer] = {"nodes": len(nodes), "identical_ordered": same}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny CPU version (CI)")
    ap.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    ap.add_argument("--budget", type=float, default=25.0, help="baseline seconds per layer before extrapolating")
    ap.add_argument("--precisions", default="tf32,bf16", help="faster --precision modes timed after the rest")
    ap.add_argument("--json", default=os.path.join(os.environ["OUT"], "gpu.json") if os.environ.get("OUT") else None)
    args = ap.parse_args(argv)
    import torch

    device = args.device or ("cpu" if args.smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; use --smoke for the CPU version", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"device {device} ({name}); torch {torch.__version__}", flush=True)
    result: dict = {"device": device, "device_name": name, "torch": torch.__version__, "smoke": args.smoke}

    def save() -> None:  # after every stage: a run stopped at its time limit still leaves its figures
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1, default=str)

    ours = run_ours(device, args.smoke)
    result["ours"] = {k: v for k, v in ours.items() if k != "cores"}
    print(f"ours: {ours['wall_s']:.1f} s, {ours['n_crops']} crops; stages {ours['timings']}", flush=True)
    save()
    base = run_baseline(device, args.smoke, ours["cores"], args.budget)
    ratio = base["wall_s_extrapolated"] / ours["wall_s"]
    result.update(baseline=base, time_ratio=ratio)
    print(f"baseline: {base['wall_s_measured']:.1f} s measured, {base['wall_s_extrapolated']:.1f} s extrapolated "
          f"to every node; time ratio baseline/ours {ratio:.2f}x", flush=True)  # fmt: skip
    for layer, a in base["agreement"].items():
        print(f"  {layer}: {a['identical_ordered']}/{a['compared']} compared nodes with identical ordered cores")
    save()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "neurflow.cli", "demo", "--device", device, "--quiet", "--out", f"{tmp}/demo"]
        demo = subprocess.run(cmd, capture_output=True, text=True)
        demo_s = time.perf_counter() - t
    print(f"neurflow demo --device {device}: exit {demo.returncode}, {demo_s:.1f} s wall", flush=True)
    if demo.returncode:
        print(demo.stderr[-2000:], file=sys.stderr)
    result.update(demo_s=demo_s, demo_exit=demo.returncode)
    save()
    for mode in [m for m in args.precisions.split(",") if m and m != "fp32"]:
        other = run_ours(device, args.smoke, precision=mode)
        agree = agreement(ours["cores"], other["cores"])
        speedup = ours["wall_s"] / other["wall_s"]
        result.setdefault("precisions", {})[mode] = {"wall_s": other["wall_s"], "speedup": speedup, "agreement": agree}
        same = sum(a["identical_ordered"] for a in agree.values())
        total = sum(a["nodes"] for a in agree.values())
        print(f"ours --precision {mode}: {other['wall_s']:.1f} s ({speedup:.2f}x fp32), "
              f"{same}/{total} nodes with the fp32 ordered cores", flush=True)  # fmt: skip
        save()
    return 0 if demo.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
