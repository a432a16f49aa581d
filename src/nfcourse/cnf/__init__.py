"""Continuous normalizing flows (chapter 4): ODE solvers, divergence estimators, CNF/FFJORD."""

from nfcourse.cnf.divergence import (divergence_exact, divergence_hutchinson,
                                     hutchinson_trace, hutchinson_variance, jacobian_rows,
                                     mean_and_se, sample_probe)
from nfcourse.cnf.model import CNF, AugmentedDynamics, ContinuousFlow, LinearField, TimeMLP
from nfcourse.cnf.solvers import (FIXED_ORDERS, FIXED_STAGES, SolverSpec, convergence_order,
                                  fixed_step_solve, solve)

__all__ = ["CNF", "AugmentedDynamics", "ContinuousFlow", "TimeMLP", "LinearField", "SolverSpec",
           "solve",
           "fixed_step_solve", "convergence_order", "FIXED_ORDERS", "FIXED_STAGES",
           "divergence_exact", "divergence_hutchinson", "hutchinson_trace",
           "hutchinson_variance", "jacobian_rows", "mean_and_se", "sample_probe"]
