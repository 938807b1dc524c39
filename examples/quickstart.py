"""Quickstart: a NeurFlow circuit for a (randomly initialised) torchvision ResNet-18.

Takes about 5 s (wall clock and CPU time alike) on 2 CPU cores once the packages are
installed (8.6 s the first time, with a cold file cache); tests/test_readme.py runs it.  With
real weights and real class images the same call explains a real class; see the README for the
command-line equivalent.

    python examples/quickstart.py
"""

import torch
import torchvision

import neurflow

torch.manual_seed(0)
model = torchvision.models.resnet18(weights=None).eval()  # random weights, seeded
images = torch.randn(8, 3, 64, 64)  # 8 random 64x64 "images"

with torch.no_grad():
    predicted = model(images).argmax(1)
target = int(predicted.mode().values)  # the most predicted class
print(f"target class: {target} ({int((predicted == target).sum())} of {len(images)} images)")
print("some usable layer names:", ", ".join(neurflow.layer_names(model)[-8:]))

nf = neurflow.NeurFlow(tau=4, top_k=10).fit(
    model,
    images,
    target=target,
    layers=["fc", "layer4.1", "layer4.0", "layer3.1"],  # top down: class layer first
    out="runs/quickstart",
    overwrite=True,
    quiet=False,
)
print(neurflow.summary(nf.circuit_))

circuit = neurflow.load("runs/quickstart")  # reload without the model
assert circuit.target == target
print(f"\nreloaded runs/quickstart: {len(circuit.layers)} layers, {sum(len(l.nodes) for l in circuit.layers)} nodes")
