"""FitResult: what fit() returns, identical on every rank."""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import InputError
from .solver.status import EMPTY, FAILED


def writing_cost(stats):
    """(seconds of writing per checkpoint, writing's share of the fit, the share it held the
    fit up for) from ``stats``: Checkpointer.stats() plus the fit's ``fit_seconds``. The
    fit is held up by the collective writes, which every rank stops for; a file one rank
    writes alone goes on in its background thread beside the others' solving (at the
    default lanes on the seed bench: 25 writes, 10% of the fit in all, 2% held up). Where
    every file is written alone (one process, h5py without MPI) all writing counts."""
    writes, fit_seconds = stats["writes"], stats["fit_seconds"]
    if writes == 0 or fit_seconds <= 0:
        return 0.0, 0.0, 0.0
    held_up = stats["collective_seconds"] or stats["write_seconds"]
    return (stats["write_seconds"] / writes, stats["write_seconds"] / fit_seconds,
            held_up / fit_seconds)


@dataclass
class StartsTable:
    """One row per start, indexed by global start index."""
    x0: np.ndarray          # (n_starts, n) start points
    x: np.ndarray           # (n_starts, n) final points
    cost: np.ndarray        # (n_starts,) final 0.5 * sum(rho); inf for failed starts
    status: np.ndarray      # (n_starts,) solver status (see nlsq_mpi.solver.status)
    nit: np.ndarray
    nfev: np.ndarray

    @classmethod
    def empty(cls, n_starts, n):
        return cls(x0=np.full((n_starts, n), np.nan), x=np.full((n_starts, n), np.nan),
                   cost=np.full(n_starts, np.inf), status=np.full(n_starts, EMPTY, np.int32),
                   nit=np.zeros(n_starts, np.int32), nfev=np.zeros(n_starts, np.int32))

    def best(self):
        """Index of the lowest cost among finished starts (ties to the lower index), or None."""
        ok = (self.status >= 0) & np.isfinite(self.cost)
        if not ok.any():
            return None
        return int(np.flatnonzero(ok)[np.argmin(self.cost[ok])])

    def as_dict(self):
        return {k: getattr(self, k) for k in ("x0", "x", "cost", "status", "nit", "nfev")}


@dataclass
class FitResult:
    """Best fit over all starts. Unpacks as ``popt, pcov = fit(...)``."""
    popt: np.ndarray
    pcov: np.ndarray
    perr: np.ndarray
    cost: float             # 0.5 * sum(rho(residuals)) at popt
    chi2: float             # sum of squared whitened residuals at popt
    dof: int                # m - n
    success: bool
    status: int
    message: str
    nfev: int
    nit: int
    optimality: float
    active_mask: np.ndarray
    best_start: int
    n_starts: int
    starts: StartsTable
    fun: np.ndarray         # whitened residuals at popt
    workflow: str = "local"
    resumed_from: Optional[str] = None
    checkpoint: Optional[dict] = None   # this run's writing: Checkpointer.stats(), fit_seconds

    def __iter__(self):
        yield self.popt
        yield self.pcov

    @property
    def reduced_chi2(self):
        return self.chi2 / self.dof if self.dof > 0 else np.inf

    def summary(self):
        lines = [f"nlsq_mpi {self.workflow}: best of {self.n_starts} starts is start "
                 f"{self.best_start} ({self.message})",
                 f"  cost {self.cost:.10g}  chi2 {self.chi2:.10g}  reduced chi2 {self.reduced_chi2:.6g}"]
        for i, (p, e) in enumerate(zip(self.popt, self.perr)):
            lines.append(f"  p[{i}] = {p:.10g} +/- {e:.3g}")
        done = int(np.sum(self.starts.status >= 0))
        lines.append(f"  starts converged {int(np.sum(self.starts.status > 0))}/{self.n_starts}, "
                     f"finished {done}, failed {int(np.sum(self.starts.status == FAILED))}")
        c = self.checkpoint
        if c and c["writes"]:
            each, share, held_up = writing_cost(c)
            lines.append(f"  checkpoints {c['writes']} ({c['solo_writes']} by one rank alone), "
                         f"{1e3 * each:.1f} ms of writing each: {100 * share:.1f}% of the "
                         f"fit's {c['fit_seconds']:.2f} s, {100 * held_up:.1f}% holding it up; "
                         f"last file {c['last_bytes'] / 1024:.0f} KiB in {c['dir']}")
        return "\n".join(lines)

    def save(self, path):
        """Write the result to ``path`` (.npz or .h5) atomically (temporary file, then rename),
        once: from rank 0 only when running under MPI. Returns the path."""
        from .parallel.comm import get_comm
        path = Path(path)
        if path.suffix not in (".npz", ".h5", ".hdf5"):   # raised on every rank alike
            raise InputError(f"path: unsupported suffix {path.suffix!r} in {str(path)!r}; use "
                             ".npz or .h5")
        if get_comm().rank != 0:
            return path
        arrays = {"popt": self.popt, "pcov": self.pcov, "perr": self.perr,
                  "active_mask": self.active_mask, "fun": self.fun,
                  **{f"starts_{k}": v for k, v in self.starts.as_dict().items()}}
        scalars = {k: getattr(self, k) for k in ("cost", "chi2", "dof", "success", "status", "message",
                                                  "nfev", "nit", "optimality", "best_start",
                                                  "n_starts", "workflow")}
        scalars["resumed_from"] = self.resumed_from or ""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)   # left by a save that was killed
        if path.suffix == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays, **{k: np.asarray(v) for k, v in scalars.items()})
        else:   # .h5, .hdf5
            import h5py
            from .h5file import file_writer
            arrays = {k: np.asarray(v) for k, v in arrays.items()}
            file_writer(h5py).write(tmp, scalars, {k: (v.dtype, v.shape, [(v, 0)])
                                                  for k, v in arrays.items()})
        tmp.replace(path)
        return path
