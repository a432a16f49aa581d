"""ODE solvers and divergence estimators, shared by the CNF, FFJORD and flow matching.

The hand-written fixed-step solvers are what chapter 4 teaches; they are tested against
torchdiffeq, which provides the adaptive and adjoint solvers.
"""

from nfcourse.ode.divergence import (divergence_exact, divergence_hutchinson, hutchinson_trace,
                                     hutchinson_variance, jacobian_rows, sample_probe)
from nfcourse.ode.solvers import (FIXED_ORDERS, FIXED_STAGES, SolverSpec, convergence_order,
                                  fixed_step_solve, solve)

__all__ = ["SolverSpec", "solve", "fixed_step_solve", "convergence_order", "FIXED_ORDERS",
           "FIXED_STAGES", "divergence_exact", "divergence_hutchinson", "hutchinson_trace",
           "hutchinson_variance", "jacobian_rows", "sample_probe"]
