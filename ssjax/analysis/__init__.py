"""Analysis of fits: diagnostics, drift alerts, forecasts, sensitivities, options.

* :mod:`~ssjax.analysis.diagnostics` — innovation tests, NIS bands, fit-error tables;
* :mod:`~ssjax.analysis.drift` — parameter-jump and CUSUM alerts for rolling fits;
* :mod:`~ssjax.analysis.forecast` — h-step forecasts and out-of-sample walk forwards;
* :mod:`~ssjax.analysis.sensitivity` — exact derivatives with respect to Θ and the state;
* :mod:`~ssjax.analysis.options` — options on futures under the model;
* :mod:`~ssjax.analysis.runs` — run folders with provenance for experiments.

Depends on the layers below it (core, data, fit, rolling).
"""

from __future__ import annotations

from ssjax.analysis import diagnostics, drift, forecast, options, runs, sensitivity

__all__ = ["diagnostics", "drift", "forecast", "options", "runs", "sensitivity"]
