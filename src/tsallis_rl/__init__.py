"""tsallis-rl: post-training reasoning LMs on the J_Q (Tsallis) loss continuum.

The core is pure tensor math: `tsallis_rl.qlog` (log_q and friends) and `tsallis_rl.estimators`
(GARL, PAFT, GRPO, RB-RLOO and the peer objectives VeriFree, loglik, IWAE, RLPR, RFT behind a name
registry). Everything else (tasks, rollouts, trainer,
integrations with TRL and verl) calls into it.
"""

from tsallis_rl.estimators import (
    EstimatorOutput,
    EstimatorSpec,
    garl_loss,
    get_estimator,
    get_estimator_spec,
    grpo_loss,
    iwae_loss,
    list_estimators,
    loglik_loss,
    paft_loss,
    rb_rloo_loss,
    register_estimator,
    rft_loss,
    rlpr_loss,
    verifree_loss,
)
from tsallis_rl.qlog import amplification, attenuation, escort, log_q, q_loss

rb_rloo = rb_rloo_loss  # the README's name for RB-RLOO (GARL at q = 0)

__version__ = "0.1.0"

__all__ = [
    "EstimatorOutput",
    "EstimatorSpec",
    "amplification",
    "attenuation",
    "escort",
    "garl_loss",
    "get_estimator",
    "get_estimator_spec",
    "grpo_loss",
    "iwae_loss",
    "list_estimators",
    "log_q",
    "loglik_loss",
    "paft_loss",
    "q_loss",
    "rb_rloo",
    "rb_rloo_loss",
    "register_estimator",
    "rft_loss",
    "rlpr_loss",
    "verifree_loss",
]
