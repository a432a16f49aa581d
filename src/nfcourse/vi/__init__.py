"""Chapter 11: normalizing flows for variational inference (its variational families, planar
and radial stacks and the mean-field Gaussian, are builders in :mod:`nfcourse.models`).

* :mod:`nfcourse.vi.energies` -- the 2-D targets (Rezende & Mohamed's ``U1``-``U4``, a
  two-mode mixture), ``log Z`` by grid quadrature, the exact mass per mode.
* :mod:`nfcourse.vi.objectives` -- the reverse-KL objective for the engine (samples of the
  flow only), the Monte-Carlo ELBO and its standard error.
* :mod:`nfcourse.vi.importance` -- the flow as an importance sampler: ``log Z`` estimate,
  delta-method standard error, Kish's effective sample size.
* :mod:`nfcourse.vi.logistic` -- Bayesian logistic regression on scikit-learn's breast-cancer
  data: log-joint, prior, held-out predictive log-likelihood.
* :mod:`nfcourse.vi.mcmc` -- the MCMC reference (multi-chain HMC with warm-up adaptation)
  and its diagnostics (split-R-hat, effective sample size).
"""

from nfcourse.vi.energies import (Energy, half_plane_mass, log_normalizer, rezende_energies,
                                  rezende_energy, two_gaussians)
from nfcourse.vi.importance import (ImportanceEstimate, importance_log_z, kish_ess,
                                    log_mean_exp)
from nfcourse.vi.logistic import (BREAST_CANCER_FEATURES, BayesianLogisticRegression,
                                  LogisticData, breast_cancer)
from nfcourse.vi.mcmc import (MCMCRun, effective_sample_size, hmc, mc_standard_error,
                              split_rhat)
from nfcourse.vi.objectives import ElboEstimate, ReverseKL, elbo, fit_reverse_kl, log_weights

__all__ = ["Energy", "half_plane_mass", "log_normalizer", "rezende_energies", "rezende_energy",
           "two_gaussians", "ImportanceEstimate", "importance_log_z", "kish_ess",
           "log_mean_exp", "BREAST_CANCER_FEATURES", "BayesianLogisticRegression",
           "LogisticData", "breast_cancer", "MCMCRun", "effective_sample_size", "hmc",
           "mc_standard_error", "split_rhat", "ElboEstimate", "ReverseKL", "elbo",
           "fit_reverse_kl", "log_weights"]
