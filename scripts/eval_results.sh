#!/bin/sh
# Regenerates the figures of docs/results.md (about 6 minutes on 2 CPU cores):
# `neurflow eval all` on the demo circuit, E1 and E6 on the planted-shortcut circuit,
# then copies the JSON tables and plots into docs/results/.
set -e
cd "$(dirname "$0")/.."
NF=.venv/bin/neurflow
$NF demo --out runs/demo --quiet > /dev/null
$NF eval runs/demo all --quiet > runs/demo-eval.txt
if [ ! -f runs/shortcut-proof/fashion-cnn-shortcut/circuit.json ]; then
    .venv/bin/python scripts/shortcut_proof.py --quiet > /dev/null
fi
$NF eval runs/shortcut-proof/fashion-cnn-shortcut fidelity --quiet > runs/shortcut-eval.txt
$NF eval runs/shortcut-proof/fashion-cnn-shortcut optimality --quiet >> runs/shortcut-eval.txt
mkdir -p docs/results
for f in runs/demo/eval/*.json runs/demo/eval/*.png; do cp "$f" "docs/results/demo-$(basename "$f")"; done
for e in fidelity optimality; do
    cp runs/shortcut-proof/fashion-cnn-shortcut/eval/$e.json docs/results/shortcut-$e.json
    cp runs/shortcut-proof/fashion-cnn-shortcut/eval/$e.png docs/results/shortcut-$e.png
done
cat runs/demo-eval.txt runs/shortcut-eval.txt
