"""Rolling recalibration at scale: several devices, float32 (a file of its own so that the
test runner can put it on another worker than tests/test_rolling.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from ssjax.rolling import recalibrate


@pytest.mark.slow
def test_float32_logliks_match_float64_on_bundled_data(wti):
    kw = dict(window=104, step=54, warm_start=True)
    f64 = recalibrate(wti, **kw)
    f32 = recalibrate(wti, dtype=jnp.float32, **kw)
    assert f32.params.kappa.dtype == np.float64  # results come back as float64 arrays
    assert f64.optimum_reached.all()
    np.testing.assert_allclose(f32.loglik, f64.loglik, rtol=1e-4)


MULTI_DEVICE = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
import jax
assert len(jax.devices()) == 4, jax.devices()
from test_rolling import SAME_PATH, WINDOW, _same_path_mask, _sim_panel
from ssjax.rolling import recalibrate
panels = {{"A": _sim_panel(1), "B": _sim_panel(2, start_missing=90, name="B")}}
out = {{}}
for warm in (False, True):
    kw = dict(window=WINDOW, step=30, budget=40, chunk_size=8, vector_width=2, warm_start=warm)
    one = recalibrate(panels, devices=1, **kw)
    four = recalibrate(panels, devices=4, **kw)
    assert four.info["devices"] == 4 and one.info["devices"] == 1
    assert np.array_equal(one.valid, four.valid) and np.array_equal(one.converged, four.converged)
    same = _same_path_mask(one) if not warm else one.valid
    for name, rtol in (("loglik", 1e-8), ("state_t", 1e-5), ("F_model_t", 1e-5)):
        a, b = getattr(one, name)[same], getattr(four, name)[same]
        assert np.allclose(a, b, rtol=rtol, atol=0), (warm, name, np.nanmax(np.abs(a - b)))
    flat = lambda r: np.concatenate(  # noqa: E731
        [np.asarray(v).reshape(v.shape[:2] + (-1,)) for v in r.params if v is not None], -1)
    d = np.abs(flat(one) - flat(four))[same]
    # to 1e-5 relative, or to 1e-3 of a standard error (values near zero, like mu)
    tol = np.maximum(1e-5 * np.abs(flat(one)[same]), 1e-3 * np.nan_to_num(one.std_err[same]))
    assert (d <= tol).all(), (warm, d.max())
    out[str(warm)] = int(one.valid.sum())
print(json.dumps(out))
"""


@pytest.mark.slow
def test_four_devices_equal_one_device(tmp_path):
    """The same call on 4 (fake CPU) devices and on 1: the same windows, fits and optima.

    Each lane's computation is the same program whatever the device count (fixed vector
    width), but XLA:CPU splits some reductions over threads differently with 4 devices, so
    the last bits can differ; on windows with one clear optimum that leaves the results equal
    to 1e-8 (loglik) and 1e-5 (parameters, states, forwards). (Windows whose likelihood is
    multi-modal can end in different optima from any rounding difference; see SAME_PATH.)
    """
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "multi_device.py"
    script.write_text(MULTI_DEVICE.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                       timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    assert counts["False"] == counts["True"] > 0
