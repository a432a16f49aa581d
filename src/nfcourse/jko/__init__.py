"""Chapter 7: the JKO scheme (gradient flows in Wasserstein space).

* :mod:`nfcourse.jko.gaussian` -- closed forms: the JKO step for Gaussians, the exact
  Ornstein-Uhlenbeck (Fokker-Planck) solution, W2 and KL between Gaussians.
* :mod:`nfcourse.jko.targets` -- target densities ``exp(-U) / Z`` with exact samplers.
* :mod:`nfcourse.jko.solver` -- the flow-based JKO solver (one invertible map per step).
* :mod:`nfcourse.jko.langevin` -- ULA / MALA as the independent reference; empirical W2.
"""

from nfcourse.jko.gaussian import (gaussian_jko_path, gaussian_jko_step, jko_step_1d,
                                   kl_gaussian, ou_1d, ou_solution, w2_gaussian)
from nfcourse.jko.langevin import LangevinRun, langevin
from nfcourse.jko.solver import (JKOConfig, JKORun, JKOStepObjective, Particles, StepFit,
                                 affine_map, coupling_map, fit_jko_map, flow_jko,
                                 gaussian_start, jko_objective)
from nfcourse.jko.targets import Target, banana_target, gaussian_target

__all__ = ["gaussian_jko_path", "gaussian_jko_step", "jko_step_1d", "kl_gaussian", "ou_1d",
           "ou_solution", "w2_gaussian", "LangevinRun", "langevin", "JKOConfig",
           "JKORun", "JKOStepObjective", "Particles", "StepFit", "affine_map", "coupling_map",
           "fit_jko_map", "flow_jko", "gaussian_start", "jko_objective", "Target", "banana_target",
           "gaussian_target"]
