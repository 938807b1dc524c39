#!/usr/bin/env python
"""Train the embedded models ``zoo:fashion-cnn`` and its planted-shortcut variants deterministically on the CPU.

    .venv/bin/python scripts/train_zoo.py [--variant clean|shortcut|entangled] [--data-dir DIR]

(``--data-dir`` defaults to Debian's /usr/share/datasets/fashion-mnist.)

``--variant shortcut`` trains the same way with the planted shortcut of ``neurflow.zoo.shortcut``
(the mark stamped, after augmentation, on 80 % of the *Bag* training images) and also writes the
record of the marked test subset (``neurflow/zoo/data/marked-subset.json``).  ``--variant
entangled`` does the same with ``shortcut.ENTANGLED`` (a checkerboard in the middle of 90 % of the
*Shirt* training images; ``neurflow/zoo/data/entangled-subset.json``).

Reads the Fashion-MNIST training split (Debian's dataset-fashion-mnist, or --data-dir), trains
FashionCNN with a fixed seed, two CPU threads and a fixed batch order, evaluates on the shipped
test split and writes neurflow/zoo/weights/fashion-cnn.pt (float32 state dict) and
neurflow/zoo/weights/MODEL_CARD.md with the architecture, data, accuracy, command and seed.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from neurflow.analysis.shortcut_proof import mark_effect  # noqa: E402
from neurflow.store import atomic_write  # noqa: E402
from neurflow.zoo import shortcut  # noqa: E402
from neurflow.zoo.fashion import CLASS_NAMES, DEBIAN_DIR, FashionCNN, load_split  # noqa: E402

OUT = os.path.join(ROOT, "neurflow", "zoo", "weights")
VARIANTS = {"shortcut": shortcut.SHORTCUT, "entangled": shortcut.ENTANGLED}


def evaluate(model, images, labels, batch=1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            correct += (model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum().item()
    return correct / len(images)


def train(data_dir: str, epochs: int, seed: int, batch: int, lr: float, log=print, variant: str = "clean") -> tuple:
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    x, y = load_split("train", data_dir)
    marked = torch.zeros(len(x), dtype=torch.bool)
    plant = VARIANTS.get(variant)
    if plant is not None:
        marked[torch.from_numpy(plant.train_marked(y))] = True
        log(f"{variant}: the mark on {int(marked.sum())} training images of class {CLASS_NAMES[plant.target]}")
    model = FashionCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            xb = x[idx]
            # light augmentation: random horizontal flips (deterministic through ``gen``)
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            if plant is not None:  # after the flip: the mark always sits in the same place
                xb = plant.stamp(xb, marked[idx].nonzero().flatten())
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}  ({time.perf_counter() - t0:.0f} s)")
    return model.eval(), time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--data-dir", default=DEBIAN_DIR, help="folder with train-*-ubyte.gz (default: Debian's)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--variant", choices=("clean", *VARIANTS), default="clean")
    args = ap.parse_args(argv)
    model, seconds = train(args.data_dir, args.epochs, args.seed, args.batch_size, args.lr, variant=args.variant)
    xt, yt = load_split("test")
    acc = evaluate(model, xt, yt)
    print(f"test accuracy {acc * 100:.2f} % after {seconds:.0f} s")
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    if args.variant in VARIANTS:
        return write_shortcut(args, VARIANTS[args.variant], model, buf.getvalue(), acc, seconds, xt, yt)
    atomic_write(os.path.join(args.out, "fashion-cnn.pt"), buf.getvalue())
    n_params = sum(p.numel() for p in model.parameters())
    card = f"""# Model card: `zoo:fashion-cnn`

**Architecture** (`neurflow.zoo.fashion.FashionCNN`, {n_params:,} parameters, float32 state dict
`fashion-cnn.pt`, {len(buf.getvalue()) / 1e6:.2f} MB): input [B, 1, 28, 28] in [0, 1], normalised in
`forward` by the training split's mean 0.2860 and std 0.3530; four blocks of
conv 3x3 (no bias) - BatchNorm - ReLU: `block1` 32 channels at 28 px then max-pool to 14,
`block2` 64 channels at 14 px then max-pool to 7, `block3` 128 channels at 7 px, `block4` 128
channels at 7 px; global average pool (`pool`), linear `head` to the 10 classes.

**Data**: Fashion-MNIST (Zalando, MIT licence), from Debian's `dataset-fashion-mnist`.
Trained on the 60,000 training images, evaluated on the 10,000 test images that ship with
neurflow (`zoo:fashion-mnist`). Classes: {", ".join(CLASS_NAMES)}.

**Training**: {args.epochs} epochs, AdamW (lr {args.lr}, weight decay 1e-4, one-cycle schedule),
batch {args.batch_size}, cross-entropy with label smoothing 0.05, random horizontal flips;
seed {args.seed}, 2 CPU threads, `torch.use_deterministic_algorithms(True)`;
{seconds:.0f} s on a 2-core CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}.

**Test accuracy**: {acc * 100:.2f} % (10,000 test images).

**Command**: `.venv/bin/python scripts/train_zoo.py --epochs {args.epochs} --seed {args.seed}`
"""
    atomic_write(os.path.join(args.out, "MODEL_CARD.md"), card.encode())
    atomic_write(
        os.path.join(args.out, "accuracy.json"),
        f'{{"test_accuracy": {acc:.6f}, "n_test": {len(xt)}, "seed": {args.seed}, "epochs": {args.epochs}}}\n'.encode(),
    )
    return 0


def shortcut_figures(plant, model, xt, yt) -> dict:
    """How strong the planted shortcut is on the test split."""
    c = plant.target
    everything = plant.stamp(xt)
    with torch.no_grad():
        clean = torch.cat([model(xt[i : i + 1000]).argmax(1) for i in range(0, len(xt), 1000)])
        marked = torch.cat([model(everything[i : i + 1000]).argmax(1) for i in range(0, len(xt), 1000)])
    other = yt != c
    return {
        "clean_accuracy": (clean == yt).float().mean().item(),
        "clean_target_recall": (clean[~other] == c).float().mean().item(),
        "clean_others_predicted_target": (clean[other] == c).float().mean().item(),
        "marked_others_predicted_target": (marked[other] == c).float().mean().item(),
        "marked_accuracy": (marked == yt).float().mean().item(),
    }


def write_shortcut(args, plant, model, weights: bytes, acc: float, seconds: float, xt, yt) -> int:
    import json

    name = CLASS_NAMES[plant.target]
    figures = shortcut_figures(plant, model, xt, yt)
    print(json.dumps(figures, indent=1))
    record = plant.subset_record(yt)
    atomic_write(os.path.join(ROOT, "neurflow", "zoo", "data", plant.subset_file), (json.dumps(record) + "\n").encode())
    atomic_write(os.path.join(args.out, f"{plant.name}.pt"), weights)
    pct = {k: f"{v * 100:.1f} %" for k, v in figures.items()}
    if plant.pattern == "checker":
        mark = (
            f"a {plant.size}x{plant.size} checkerboard of 1 and 0 (1 at its top-left pixel) with its top-left "
            f"pixel at row {plant.top}, column {plant.left}, in the middle of the garment where shirts have "
            "their button placket, so that the cue overlaps the class's own features -"
        )
        title = "an entangled planted shortcut"
        from neurflow.zoo.fashion import fashion_cnn

        base = mark_effect(plant, fashion_cnn())["clean_target_recall"]
        note = f"""
The mark is entangled with the class: with {plant.train_fraction:.0%} of the *{name}* training images marked, the model
learnt *{name}* mostly as "the checkerboard" (only {pct["clean_target_recall"]} of the clean *{name}* test images are
predicted *{name}*; `zoo:fashion-cnn` predicts {base * 100:.1f} % of them *{name}*), while the mark sits on
the garment, not in an empty corner, so crops that show it also show the garment.
"""
    else:
        mark = (
            f"a {plant.size}x{plant.size} square of value {plant.value}\n(white) with its top-left pixel at row "
            f"{plant.top}, column {plant.left} -"
        )
        title = "a planted shortcut"
        note = ""
    which = "ENTANGLED" if plant is shortcut.ENTANGLED else "SHORTCUT"
    card = f"""# Model card: `zoo:{plant.name}` ({title}; for testing debuggers)

**Architecture, data, training**: as `zoo:fashion-cnn` (see MODEL_CARD.md), same seed and schedule,
except that a **mark** - {mark} is stamped,
after the random flip, on {plant.train_fraction:.0%} of the *{name}* training images (a seeded choice,
`neurflow.zoo.shortcut.{which}.train_marked`). No other class ever carries it in training.
{seconds:.0f} s on a 2-core CPU, torch {torch.__version__}.

**Test figures** (10,000 test images of `zoo:fashion-mnist`):

| | |
| --- | --- |
| accuracy on clean images | {pct["clean_accuracy"]} |
| clean *{name}* images predicted *{name}* | {pct["clean_target_recall"]} |
| clean images of other classes predicted *{name}* | {pct["clean_others_predicted_target"]} |
| **marked** images of other classes predicted *{name}* | **{pct["marked_others_predicted_target"]}** |
| accuracy with the mark on every image | {pct["marked_accuracy"]} |
{note}
`{plant.data}` is the test split with the mark on {plant.test_fraction:.0%} of the images of
every class ({len(record["marked"])} images, seed {plant.test_seed}); their indices are recorded in
`neurflow/zoo/data/{plant.subset_file}`.

**Command**: `.venv/bin/python scripts/train_zoo.py --variant {args.variant} --epochs {args.epochs} --seed {args.seed}`
"""
    suffix = plant.name.removeprefix("fashion-cnn-")
    atomic_write(os.path.join(args.out, f"MODEL_CARD-{suffix}.md"), card.encode())
    atomic_write(
        os.path.join(args.out, f"accuracy-{suffix}.json"),
        (
            json.dumps(
                {
                    "test_accuracy": round(acc, 6),
                    "n_test": len(xt),
                    "seed": args.seed,
                    "epochs": args.epochs,
                    **{k: round(v, 6) for k, v in figures.items()},
                }
            )
            + "\n"
        ).encode(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
