"""Parameter covariance from the Jacobian at the solution, exactly as scipy's curve_fit.

pcov = (J^T J)^+ from the SVD of J, discarding singular values below eps * max(m, n) * s_max;
scaled by the reduced chi-square 2 cost / (m - n) unless absolute_sigma. Where it cannot be
estimated (rank-deficient to NaN, or m <= n without absolute_sigma) pcov is all inf and a
CovarianceWarning is issued.
"""
import warnings

import numpy as np


class CovarianceWarning(UserWarning):
    """The covariance of the parameters could not be estimated."""


def covariance(J, cost, m, n, absolute_sigma):
    """(pcov, perr) from the (loss-scaled, whitened) Jacobian J and cost = 0.5 * chi2."""
    J = np.asarray(J, float)
    pcov = None
    if np.all(np.isfinite(J)):
        _, s, VT = np.linalg.svd(J, full_matrices=False)
        threshold = np.finfo(float).eps * max(J.shape) * s[0]
        keep = s > threshold
        s, VT = s[keep], VT[keep]
        pcov = (VT.T / s**2) @ VT
    warn = False
    if pcov is None or np.isnan(pcov).any():
        pcov = np.full((n, n), np.inf)
        warn = True
    elif not absolute_sigma:
        if m > n:
            pcov = pcov * (2 * cost / (m - n))
        else:
            pcov = np.full((n, n), np.inf)
            warn = True
    if warn:
        warnings.warn("Covariance of the parameters could not be estimated "
                      f"(m={m} points, n={n} parameters)", CovarianceWarning, stacklevel=3)
    return pcov, np.sqrt(np.diag(pcov))
