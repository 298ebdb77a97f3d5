"""Every argument of a generation request either works or is refused with an EdgediffError.

Hypothesis throws values of every JSON-ish type, non-finite, negative, fractional and huge at
each argument of `Pipeline.__call__` in turn: the pipeline must answer with images whose
pixels are all finite, or with an EdgediffError that names the argument — never another
exception.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgediff.cli import cli
from edgediff.errors import EdgediffError
from edgediff.runtime.pipeline import Pipeline

# Integers a request could run with in a moment, and ones far beyond any machine's memory.
SMALL = st.integers(-10, 40)
HUGE = st.sampled_from([2**40, 2**63, 2**64, 10**30, -(2**63)])
NON_FINITE = st.sampled_from([float("nan"), float("inf"), -float("inf"), np.float32("nan")])
ANY = st.one_of(
    NON_FINITE,
    st.none(),
    st.booleans(),
    SMALL,
    HUGE,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
SIZES = st.one_of(ANY, st.integers(1, 20).map(lambda k: 16 * k))  # valid sizes too
ARGUMENTS = {
    "prompt": ANY,
    "negative_prompt": ANY,
    "num_inference_steps": ANY,
    "guidance_scale": st.one_of(ANY, st.floats(-1e40, 1e40)),
    "eta": ANY,
    "height": SIZES,
    "width": SIZES,
    "num_images_per_prompt": ANY,
    "seed": ANY,
    "output_type": ANY,
    "latents": st.one_of(
        ANY,
        st.sampled_from(
            [
                np.full((1, 4, 16, 16), np.nan, np.float32),
                np.full((1, 4, 16, 16), np.inf, np.float32),
                np.zeros((1, 4, 16), np.float32),
                np.zeros((0, 4, 16, 16), np.float32),
                np.array(["a"] * 4).reshape(1, 4, 1, 1),
                np.ones((1, 4, 16, 16), np.float32),
            ]
        ),
    ),
    "callback": st.one_of(ANY, st.just(lambda *a: None)),
}


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    with Pipeline.load(None) as pipeline:
        yield pipeline


def _finite(result) -> bool:
    if isinstance(result, np.ndarray):
        return bool(np.isfinite(result).all())
    return all(np.isfinite(np.asarray(image, dtype=np.float32)).all() for image in result)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_each_argument_works_or_is_refused_with_an_edgediff_error(pipe, data):
    name = data.draw(st.sampled_from(sorted(ARGUMENTS)), label="argument")
    value = data.draw(ARGUMENTS[name], label="value")
    request = dict(prompt="a red circle", num_inference_steps=1, seed=0, output_type="np")
    request[name] = value
    try:
        result = pipe(**request)
    except EdgediffError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert _finite(result)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--guidance", "nan"], "guidance_scale must be a finite number"),
        (["--guidance", "inf"], "guidance_scale must be a finite number"),
        (["--guidance", "1e6"], "guidance_scale must be a finite number in [0, 100]"),
        (["--seed", "-1"], "seed must be in [0, 18446744073709551615]"),
        (["--height", str(2**40)], "more than this machine's"),
        (["--eta", "nan"], "eta must be a finite number"),
    ],
)
def test_cli_refuses_bad_values_in_one_line(tmp_path, options, words):
    out = tmp_path / "x.png"
    result = CliRunner().invoke(cli, ["generate", "a red circle", "--out", str(out), *options])
    assert result.exit_code in (1, 2), result.output
    assert words in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()
