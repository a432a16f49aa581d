"""Chapter 6: flow matching (CFM, OT-CFM, rectified flow).

Time runs from noise (``t = 0``) to data (``t = 1``) everywhere in this package; the lecture
uses the opposite direction (its ``s`` is ``1 - t``).

* :mod:`.paths` -- conditional paths and their exact velocities (linear/OT with ``sigma_min``,
  straight, variance preserving).
* :mod:`.coupling` -- independent and exact minibatch-OT couplings (POT).
* :mod:`.train` -- the CFM loss and objective, trained by the one engine (fixed pairs give
  rectified flow's reflow); the velocity network is :class:`nfcourse.nn.VelocityMLP`.
* :mod:`.sampling` -- sampling with the CNF solvers, trajectories, exact log-likelihood
  through :class:`nfcourse.flows.continuous.ContinuousFlow`, reflow pairs.
* W2, MMD, straightness and end-point error are in :mod:`nfcourse.metrics.distances`.
* :mod:`.gaussian` -- closed-form marginal velocities for Gaussian-mixture data.
* The lecture's example as written, to show its defects: :mod:`nfcourse.book.lecture`.
"""

from nfcourse.matching.coupling import (COUPLINGS, independent_coupling, ot_assignment,
                                        ot_coupling, pair, transport_cost)
from nfcourse.matching.gaussian import GaussianMixture, gaussian_1d_velocity
from nfcourse.matching.paths import PATHS, GaussianPath, LinearPath, StraightPath, VPPath
from nfcourse.matching.sampling import (density_model, integrate, reflow_pairs, sample, solver,
                                        trajectory)
from nfcourse.matching.train import CFMObjective, cfm_loss, train_cfm

__all__ = ["COUPLINGS", "independent_coupling", "ot_assignment", "ot_coupling", "pair",
           "transport_cost", "GaussianMixture", "gaussian_1d_velocity",
           "PATHS", "GaussianPath", "LinearPath",
           "StraightPath", "VPPath", "density_model", "integrate", "reflow_pairs", "sample",
           "solver", "trajectory", "CFMObjective", "cfm_loss", "train_cfm"]
