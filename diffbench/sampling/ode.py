"""The general probability-flow ODE of EDM (Karras et al. 2022, Eq. 4 and Table 1): sigma(t) and s(t).

dx/dt = (sigma'(t)/sigma(t) + s'(t)/s(t)) x - sigma'(t) s(t)/sigma(t) D(x/s(t); sigma(t)).
The defaults, sigma(t) = t and s(t) = 1, give dx/dsigma = (x - D(x; sigma)) / sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from diffbench.errors import UnknownNameError
from diffbench.sampling.schedules import VP_EPSILON_S, vp_beta_from_range
from diffbench.sampling.vocabulary import SCALING, SIGMA_T


@dataclass(frozen=True)
class TimeParam:
    """sigma(t), its inverse and derivative, and the scaling s(t) with its derivative (EDM Table 1)."""

    sigma_t: str = "linear"
    scaling: str = "none"
    beta_d: float = 19.9
    beta_min: float = 0.1

    @classmethod
    def make(
        cls,
        sigma_t: str,
        scaling: str,
        *,
        sigma_min: float,
        sigma_max: float,
        epsilon_s: float = VP_EPSILON_S,
    ) -> TimeParam:
        """Validate the names; for vp, fit beta_d and beta_min to the sigma range (EDM ablation sampler)."""
        if sigma_t not in SIGMA_T:
            raise UnknownNameError("sigma_t", sigma_t, SIGMA_T)
        if scaling not in SCALING:
            raise UnknownNameError("scaling", scaling, SCALING)
        beta_d, beta_min = vp_beta_from_range(sigma_min, sigma_max, epsilon_s)
        return cls(sigma_t, scaling, beta_d, beta_min)

    @property
    def trivial(self) -> bool:
        """True for sigma(t) = t, s(t) = 1: t is sigma itself."""
        return self.sigma_t == "linear" and self.scaling == "none"

    def sigma(self, t: float) -> float:
        if self.sigma_t == "vp":  # EDM Table 1: sqrt(exp(beta_d t^2/2 + beta_min t) - 1)
            return math.sqrt(math.expm1(0.5 * self.beta_d * t * t + self.beta_min * t))
        if self.sigma_t == "ve":  # sigma = sqrt(t)
            return math.sqrt(t)
        return t

    def sigma_inv(self, sigma: float) -> float:
        if self.sigma_t == "vp":  # EDM Table 1: (sqrt(beta_min^2 + 2 beta_d ln(sigma^2+1)) - beta_min) / beta_d
            return (
                math.sqrt(self.beta_min**2 + 2 * self.beta_d * math.log1p(sigma * sigma)) - self.beta_min
            ) / self.beta_d
        if self.sigma_t == "ve":
            return sigma * sigma
        return sigma

    def sigma_deriv(self, t: float) -> float:
        if self.sigma_t == "vp":  # EDM Table 1: (beta_min + beta_d t)(sigma + 1/sigma)/2
            s = self.sigma(t)
            return 0.5 * (self.beta_min + self.beta_d * t) * (s + 1 / s)
        if self.sigma_t == "ve":
            return 0.5 / math.sqrt(t)
        return 1.0

    def scaled(self, x, t: float):
        """x (EDM space, the denoiser's input) as the ODE's state s(t) x; x itself when s = 1."""
        return x if self.scaling == "none" else x * self.s(t)

    def unscaled(self, x, t: float):
        """The ODE's state back in EDM space, x / s(t); x itself when s = 1."""
        return x if self.scaling == "none" else x / self.s(t)

    def s(self, t: float) -> float:
        if self.scaling == "vp":  # EDM Table 1: 1/sqrt(1 + sigma(t)^2)
            return 1 / math.sqrt(1 + self.sigma(t) ** 2)
        return 1.0

    def s_deriv(self, t: float) -> float:
        if self.scaling == "vp":  # EDM Table 1: -sigma(t) sigma'(t) s(t)^3
            return -self.sigma(t) * self.sigma_deriv(t) * self.s(t) ** 3
        return 0.0

    def coefficients(self, t: float) -> tuple[float, float]:
        """(a, b) with dx/dt = a x - b D(x/s; sigma(t)) (EDM Eq. 4)."""
        sig, dsig, s = self.sigma(t), self.sigma_deriv(t), self.s(t)
        return dsig / sig + self.s_deriv(t) / s, dsig * s / sig


EDM_ODE = TimeParam()
