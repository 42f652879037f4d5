"""tsallis-rl: post-training reasoning LMs on the J_Q (Tsallis) loss continuum.

The core is pure tensor math: `tsallis_rl.qlog` (log_q and friends) and `tsallis_rl.estimators`
(GARL, PAFT, GRPO, RB-RLOO behind a name registry). Everything else (tasks, rollouts, trainer,
integrations with TRL and verl) calls into it.
"""

from tsallis_rl.estimators import (
    EstimatorOutput,
    garl_loss,
    get_estimator,
    grpo_loss,
    list_estimators,
    paft_loss,
    register_estimator,
)
from tsallis_rl.qlog import amplification, attenuation, escort, log_q, q_loss

__version__ = "0.1.0"

__all__ = [
    "EstimatorOutput",
    "amplification",
    "attenuation",
    "escort",
    "garl_loss",
    "get_estimator",
    "grpo_loss",
    "list_estimators",
    "log_q",
    "paft_loss",
    "q_loss",
    "register_estimator",
]
