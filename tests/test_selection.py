"""Class images by label or by prediction (method/selection.py), and what each costs: labelled
selection reads no prediction (issue 24 item 4: a full prediction pass over every image, only to
learn the number of classes)."""

import pytest
import torch

from neurflow import NeurFlow
from neurflow.errors import NeurFlowError
from neurflow.method.selection import select_class_images

from conftest import tiny_net


def test_labelled_selection_predicts_one_image_not_the_whole_data():
    # the same labelled run with and without given predictions: without, one image's forward more
    # (the number of classes), not a pass over all 40
    n = 40
    torch.manual_seed(0)
    model = tiny_net().eval()
    seen = []
    handle = model.head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        images, labels = torch.rand(n, 3, 16, 16), torch.full((n,), 2)
        NeurFlow(tau=2, top_k=4, ig_steps=4, granularities=(1.0,), selection="labelled").fit(
            model, images, 2, ["head", "block2", "block1"], labels=labels
        )
        with_all = sum(seen)
        seen.clear()
        NeurFlow(tau=2, top_k=4, ig_steps=4, granularities=(1.0,), selection="labelled").fit(
            model, images, 2, ["head", "block2", "block1"], labels=labels, predictions=torch.zeros(n, 4)
        )
    finally:
        handle.remove()
    assert with_all - sum(seen) == 1  # without given predictions: one image's forward, no more


def test_no_image_labelled_as_the_target_names_the_most_labelled_classes():
    labels = torch.tensor([0, 0, 3, -1, -1, -1])
    with pytest.raises(NeurFlowError, match=r"no image is labelled as 2; most labelled: 0 \(2 images\), 3 \(1 image\)"):
        select_class_images(torch.zeros(6, 3, 4, 4), None, labels, 2, "labelled")
