import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

import ssjax  # noqa: E402


@pytest.fixture(scope="session")
def wti():
    """The bundled weekly WTI panel (ACT/365 maturities)."""
    return ssjax.datasets.load_wti_ss2000()


@pytest.fixture(scope="session")
def wti_data(wti):
    return ssjax.make_market_data(wti.F_mkt, wti.ttm, dt=wti.dt)


@pytest.fixture(scope="session")
def theta_wti():
    """Parameters near the WTI optimum, as a plain dict (for the NumPy references)."""
    return dict(
        kappa=1.5,
        sigma_x=0.29,
        sigma_y=0.16,
        rho=0.39,
        mu=0.0086,
        meas_sd=np.array([0.042, 0.005, 0.0034, 0.0008, 0.004]),
    )


@pytest.fixture(scope="session")
def params_wti(theta_wti):
    return ssjax.make_params(**theta_wti)
