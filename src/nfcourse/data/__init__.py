"""Data sets: 2-D toy distributions (:mod:`.toy2d`) with the exact two-moons density."""

from nfcourse.data.toy2d import (DATASETS_2D, DensityScore, checkerboard, eight_gaussians,
                                 get_sampler, make_2d, moons_entropy,
                                 moons_lecture_split_floor, moons_log_prob,
                                 moons_marginal_kl_to_standard_normal, moons_marginal_log_prob,
                                 pinwheel, rings, score_on_checkerboard, score_on_moons, spirals,
                                 two_moons)

__all__ = ["DATASETS_2D", "DensityScore", "checkerboard", "eight_gaussians", "get_sampler",
           "make_2d", "moons_entropy", "moons_log_prob", "pinwheel", "rings",
           "score_on_checkerboard", "score_on_moons", "spirals", "two_moons",
           "moons_marginal_log_prob", "moons_marginal_kl_to_standard_normal",
           "moons_lecture_split_floor"]
