"""``NeurFlow`` keeps scikit-learn's estimator contract: the constructor stores settings,
``get_params`` / ``set_params`` read and change them, ``sklearn.base.clone`` copies an unfitted
estimator, fitted results end in an underscore."""

import dataclasses

import pytest
from sklearn.base import clone

import neurflow
from neurflow.config import NeurFlowConfig
from neurflow.errors import NeurFlowError

from conftest import SKIP_LAYERS, majority_class


def test_clone_copies_the_settings_and_nothing_fitted(skipnet, tiny_images):
    nf = neurflow.NeurFlow(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5), n_groups=(2,))
    copy = clone(nf)
    assert copy is not nf and copy.get_params() == nf.get_params()
    assert copy.config == NeurFlowConfig(tau=3, top_k=6, ig_steps=8, granularities=(1.0, 0.5), n_groups=(2,))
    nf.fit(skipnet, tiny_images, target=majority_class(skipnet, tiny_images), layers=SKIP_LAYERS[:3])
    assert hasattr(nf, "circuit_") and not hasattr(clone(nf), "circuit_")
    refit = clone(nf).fit(skipnet, tiny_images, target=nf.circuit_.target, layers=SKIP_LAYERS[:3])
    assert _same_but_timings(refit.circuit_, nf.circuit_)  # the clone computes the same circuit


def _same_but_timings(a, b) -> bool:
    da, db = a.to_json(), b.to_json()
    for d in (da, db):
        d["meta"].pop("timings_s", None)
        for layer in d["layers"]:
            layer.pop("seconds", None)
    return da == db


def test_get_params_lists_every_setting_and_set_params_changes_them():
    nf = neurflow.NeurFlow()
    params = nf.get_params(deep=True)
    assert params == nf.get_params(deep=False)
    assert list(params) == [f.name for f in dataclasses.fields(NeurFlowConfig)]
    assert params == dataclasses.asdict(NeurFlowConfig())  # the defaults, from the one config
    assert nf.set_params(tau=4, top_k=7) is nf
    assert (nf.config.tau, nf.config.top_k) == (4, 7)
    assert neurflow.NeurFlow(config=NeurFlowConfig(tau=3), top_k=9).get_params()["tau"] == 3


@pytest.mark.parametrize("make", [lambda: neurflow.NeurFlow(tua=8), lambda: neurflow.NeurFlow().set_params(tua=8)])
def test_an_unknown_setting_is_one_line_with_the_close_match(make):
    with pytest.raises(NeurFlowError, match=r"tua: expected a known name, got 'tua' \(did you mean tau\?"):
        make()


def test_set_params_validates_like_the_constructor():
    with pytest.raises(NeurFlowError, match="tau: expected an integer >= 1"):
        neurflow.NeurFlow().set_params(tau=0)


def test_the_settings_are_in_the_signature_and_the_docstring():
    import inspect

    params = inspect.signature(neurflow.NeurFlow).parameters
    fields = dataclasses.fields(NeurFlowConfig)
    assert list(params) == ["config", *(f.name for f in fields)]
    assert all(
        params[f.name].default == f.default and params[f.name].kind is inspect.Parameter.KEYWORD_ONLY for f in fields
    )
    doc = neurflow.NeurFlow.__doc__
    assert "    tau : int, default 16\n        core neurons per node" in doc and "    top_k : int, default 50" in doc
