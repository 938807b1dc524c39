"""The ``annotations`` labeler: file formats, the crop rule, the statistics, zoo data."""

import json
import math
import re

import numpy as np
import pytest

import neurflow
from neurflow.analysis.labels import get_labeler, label_run
from neurflow.analysis.labels.annotations import enrichment, read_annotations, tag_matrix
from neurflow.cli import main
from neurflow.errors import NeurFlowError
from neurflow.provenance import Provenance

from conftest import one_line, tiny_run


def test_enrichment_matches_brute_force_counting():
    rng = np.random.RandomState(0)
    tagged = rng.rand(60) < 0.3
    members = rng.choice(60, 12, replace=False)
    e = enrichment(members, tagged)
    N, K, n, k = 60, int(tagged.sum()), 12, int(tagged[members].sum())
    p = sum(math.comb(K, j) * math.comb(N - K, n - j) for j in range(k, min(K, n) + 1)) / math.comb(N, n)
    assert e["p_value"] == pytest.approx(p, rel=1e-9)
    assert e["precision"] == k / n and e["recall"] == k / K and e["base_rate"] == K / N
    assert e["confidence"] == pytest.approx(max(0.0, (k / n - K / N) / (1 - K / N)))


def test_box_rule_and_file_ids_by_brute_force():
    crop_image = np.array([0, 0, 0, 1, 1, 2])
    crop_box = np.array([[0, 0, 16, 16], [0, 0, 8, 8], [8, 8, 8, 8], [0, 0, 16, 16], [4, 4, 8, 8], [0, 0, 16, 16]])
    records = [("0", "corner", (1.0, 1.0, 4.0, 4.0)), ("b.png", "whole", None), ("1", "half-in", (0.0, 10.0, 4.0, 4.0))]
    tags, m = tag_matrix(records, crop_image, crop_box, files=["a.png", "b.png", "c.png"])
    want = np.zeros_like(m)
    for _r, (img, tag, box) in enumerate(records):
        img = {"b.png": 1}.get(img, None) if not img.isdigit() else int(img)
        for c in range(len(crop_image)):
            if crop_image[c] != img:
                continue
            if box is None:
                want[tags.index(tag), c] = True
                continue
            t, l, h, w = crop_box[c]
            iy = max(0, min(t + h, box[0] + box[2]) - max(t, box[0]))
            ix = max(0, min(l + w, box[1] + box[3]) - max(l, box[1]))
            want[tags.index(tag), c] |= iy * ix >= 0.5 * box[2] * box[3]
    assert np.array_equal(m, want)
    assert m[tags.index("corner")].tolist() == [True, True, False, False, False, False]
    # the box (0, 10, 4, 4) lies wholly in the whole-image crop of image 1, outside its 8-px crop at (4, 4)
    assert m[tags.index("half-in")].tolist() == [False, False, False, True, False, False]
    with pytest.raises(NeurFlowError, match="none of the ids matched"):
        tag_matrix([("zz.png", "x", None)], crop_image, crop_box, files=["a.png"])


def test_file_formats(tmp_path):
    (tmp_path / "a.csv").write_text("image,tags,top,left,height,width\n3,red;round,,,,\n4,mark,1,1,4,4\n")
    assert read_annotations(tmp_path / "a.csv") == [
        ("3", "red", None),
        ("3", "round", None),
        ("4", "mark", (1.0, 1.0, 4.0, 4.0)),
    ]
    (tmp_path / "b.json").write_text(json.dumps({"3": ["red", {"tag": "mark", "box": [1, 1, 4, 4]}]}))
    assert read_annotations(tmp_path / "b.json") == [("3", "red", None), ("3", "mark", (1.0, 1.0, 4.0, 4.0))]
    (tmp_path / "c.json").write_text(json.dumps([{"image": "x.png", "tag": "red"}]))
    assert read_annotations(tmp_path / "c.json") == [("x.png", "red", None)]
    (tmp_path / "bad.csv").write_text("name,label\n1,x\n")
    with pytest.raises(NeurFlowError, match="'image' and 'tag'"):
        read_annotations(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(NeurFlowError, match="valid JSON"):
        read_annotations(tmp_path / "bad.json")
    with pytest.raises(NeurFlowError, match="no such file"):
        read_annotations(tmp_path / "none.csv")


def test_a_group_gets_the_tag_planted_on_its_exemplars(tmp_path):
    c = tiny_run(tmp_path / "run")
    layer = c.layers[1]
    group = layer.groups[0]
    ex = layer.group_crops(group)
    boxes, images = c.arrays["crop_box"], c.arrays["crop_image"]
    rows = ["image,tag,top,left,height,width"]
    rows += [f"{images[e]},planted,{boxes[e][0]},{boxes[e][1]},{boxes[e][2]},{boxes[e][3]}" for e in ex]
    rows += [f"{i},everywhere,,,," for i in range(8)]
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    res = label_run(tmp_path / "run", get_labeler("annotations", annotations=str(tmp_path / "tags.csv")))
    got = neurflow.load(tmp_path / "run").layers[1].groups[0].label
    assert got["text"] == "planted" and got["evidence"]["precision"] == 1.0 and got["labeler"] == "annotations"
    assert got["confidence"] == pytest.approx(1.0)  # every exemplar carries the tag
    # "everywhere" is on every crop: never enriched, never a label
    assert all(g["text"] != "everywhere" for g in res["groups"])
    assert res["labels"] == sum(len(l.groups) for l in c.layers[1:])  # offline labelers label every group


def test_zoo_annotations_on_zoo_data(tmp_path, capsys):
    """A small real circuit on zoo:fashion-mnist-marked, labelled from the zoo's annotations."""
    from neurflow.sources.datasets import load_data
    from neurflow.sources.models import load_model
    from neurflow.zoo.annotations import zoo_annotations

    loaded, data = load_model("zoo:fashion-cnn"), load_data("zoo:fashion-mnist-marked")
    neurflow.NeurFlow(tau=2, top_k=10, ig_steps=4, granularities=(1.0, 0.5)).fit(
        loaded.model,
        data.images,
        "Sneaker",
        ["head", "block4", "block3"],
        labels=data.labels,
        class_names=loaded.class_names,
        out=tmp_path / "run",
        provenance=Provenance(data_spec="zoo:fashion-mnist-marked"),
    )
    assert (
        main(["label", str(tmp_path / "run"), "--labeler", "annotations", "--annotations", "zoo", "--json", "--quiet"])
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    vocab = {t for _, t, _ in zoo_annotations("zoo:fashion-mnist-marked")}
    assert {"mark", "Sneaker", "bright", "dark", "wide", "tall"} <= vocab
    assert res["groups"] and all(g["text"] in vocab or g["text"].startswith("no annotated") for g in res["groups"])
    # the evidence is what the crops say: recompute one group's precision by hand
    c = neurflow.load(tmp_path / "run")
    g = res["groups"][0]
    layer = c.layer(g["layer"])
    ex = layer.group_crops(layer.groups[g["group"]])
    recs = [r for r in zoo_annotations("zoo:fashion-mnist-marked") if r[1] == g["text"]]
    tagged_images = {int(i) for i, _, box in recs if box is None}
    if g["text"] != "mark":
        hits = sum(int(c.arrays["crop_image"][e]) in tagged_images for e in ex)
        assert g["evidence"]["precision"] == pytest.approx(hits / len(ex))
    assert main(["label", str(tmp_path / "run"), "--labeler", "annotations", "--annotations", "zoo"]) == 0
    printed = capsys.readouterr()
    assert "annotations" in printed.out
    # issue 24: the labels are printed once, in the summary; no `neurflow: block2/G5: dark` log line on stderr
    assert not re.search(r"^neurflow: \S+/G\d+: ", printed.err, re.M), printed.err


def test_zoo_annotations_refuse_other_data(tmp_path):
    tiny_run(tmp_path / "run")
    with pytest.raises(NeurFlowError, match="'zoo' only"):
        label_run(tmp_path / "run", get_labeler("annotations", annotations="zoo"))


# --- annotation files of the wrong shape (issue 23): one line naming what is wrong, never a traceback


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ann") / "run"
    tiny_run(out)
    return out


@pytest.mark.parametrize(
    "name,text,needle",
    [
        ("num.json", "5", "got 'a JSON number'"),
        ("bool.json", "true", "got 'a JSON boolean'"),
        ("str.json", '"red; round"', "got 'a JSON string'"),
        ("nums.json", "[1, 2]", 'records {"image": id, "tag": "t"} in a JSON list, got \'1\''),
        ("mixed.json", '[{"image": 0, "tag": "x"}, 5]', "item 2"),
        ("noimage.json", '[{"image": 0, "tag": "x"}, {"tag": "y"}]', "item 2"),
        ("listid.json", '[{"image": [0], "tag": "x"}]', "image ids as file names or indices, got '[0]'"),
        ("listtag.json", '{"0": ["x"], "1": [{"tag": ["a", "b"]}]}', "image 1"),
        ("nantag.json", '{"0": [{"tag": "x", "box": [0, 0, "nan", 4]}]}', "finite, height and width > 0"),
        ("negbox.json", '{"0": [{"tag": "x", "box": [0, 0, -4, 4]}]}', "finite, height and width > 0"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "valid JSON"),
        ("super.json", '{"²": ["x"]}', "none of the ids matched"),
        ("far.json", '{"99999": ["x"]}', "none of the ids matched an image of the run's crops"),
        ("big.csv", "image,tag\n0," + "a" * 200_000 + "\n", "a readable CSV file"),
        ("noimage.csv", "image,tag\n0,x\n,y\n", "an image id in every row with a tag, got 'line 3'"),
        ("nanbox.csv", "image,tag,top,left,height,width\n0,x,nan,0,4,4\n", "finite, height and width > 0"),
    ],
)
def test_annotation_files_of_the_wrong_shape(shared_run, tmp_path, capsys, name, text, needle):
    (tmp_path / name).write_text(text)
    before = (shared_run / "circuit.json").read_bytes()
    args = ["label", str(shared_run), "--labeler", "annotations", "--annotations", str(tmp_path / name), "--quiet"]
    line = one_line(args, capsys)
    assert line.startswith("neurflow: error: --annotations: expected ") and needle in line, line
    assert len(line) < 400 and (shared_run / "circuit.json").read_bytes() == before
