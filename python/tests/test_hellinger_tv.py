"""Squared Hellinger distance and total variation per row against NumPy
float64 from the same float32 inputs (forms, normalisations, broadcast rows,
zeros), their zero rules, and the log base they refuse (not logarithmic)."""

import numpy as np
import pytest

import kullback
import refs
from test_reference import make

NAMES = ["hellinger", "total_variation"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("p_form,q_form", [("probs", "probs"), ("log_probs", "logits")])
@pytest.mark.parametrize("normalize", ["validate", "renormalize"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (5, 257), (3, 4099)])
def test_matches_numpy(backend, name, p_form, q_form, normalize, shape):
    rng = np.random.default_rng(17)
    rows, cols = shape
    p = make(rng, rows, cols, p_form, normalize, True)
    for q in (make(rng, rows, cols, q_form, normalize, True),
              make(rng, 1, cols, q_form, normalize, True)):
        got = getattr(kullback, name)(p, q, p_form=p_form, q_form=q_form,
                                      normalize=normalize, backend=backend)
        want = refs.measure(name, p, q, p_form, q_form, normalize)
        np.testing.assert_allclose(got, want, rtol=refs.REL, atol=refs.ABS)


@pytest.mark.parametrize("name", NAMES)
def test_zero_rules_and_base(backend, name):
    f = getattr(kullback, name)
    assert f([1.0, 0.0], [0.0, 1.0], backend=backend) == 1.0  # disjoint: 1, not inf
    assert f([0.5, 0.5], [0.5, 0.5], backend=backend) == 0.0
    with pytest.raises(ValueError, match="not logarithmic"):
        f([0.5, 0.5], [0.25, 0.75], base=2, backend=backend)
