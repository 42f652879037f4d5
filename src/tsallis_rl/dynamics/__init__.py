"""Gradient-flow theory lab on exact models (METHOD.md sections 2-4): escape times, noise
memorisation, the escort minimiser, and the bias/variance of GARL and PAFT.

Run it as `tsallis-rl theory all --out DIR` (report.md, PNGs, results.json), or use the pieces:
    >>> from tsallis_rl.dynamics import sigmoid_escape_time
    >>> sigmoid_escape_time(1e-6, q=0.75)
"""

from tsallis_rl.dynamics.bias import (
    LatentEstimatorModel,
    bias_variance_point,
    fit_bias_slope,
    make_latent_model,
)
from tsallis_rl.dynamics.escape import (
    LatentModel,
    SigmoidModel,
    SoftmaxModel,
    fit_rate,
    sigmoid_escape_time,
    sigmoid_escape_time_asymptotic,
    sigmoid_escape_time_closed_form,
    simulate_escape,
)
from tsallis_rl.dynamics.landscape import escort_numerical, escort_objective
from tsallis_rl.dynamics.noise import (
    equilibrium_contamination,
    noise_drift,
    simulate_contamination,
    time_to_contamination,
)

__all__ = [
    "LatentEstimatorModel",
    "LatentModel",
    "SigmoidModel",
    "SoftmaxModel",
    "bias_variance_point",
    "equilibrium_contamination",
    "escort_numerical",
    "escort_objective",
    "fit_bias_slope",
    "fit_rate",
    "make_latent_model",
    "noise_drift",
    "sigmoid_escape_time",
    "sigmoid_escape_time_asymptotic",
    "sigmoid_escape_time_closed_form",
    "simulate_contamination",
    "simulate_escape",
    "time_to_contamination",
]
