"""Test job: a long hpc fit with checkpoints. argv: OUT.npz CKPT_DIR [extra fit kwargs as JSON].
The extra key "signal_before_fit" (a signal name) makes the job send itself that signal
before it calls fit, as a scheduler's preemption during imports or data loading would."""
import json
import os
import signal
import sys

import jax.numpy as jnp
import numpy as np

from nlsq_mpi import fit


def model(x, a, b, c, d, e):
    return a * jnp.exp(-b * x) * jnp.cos(c * x + d) + e


rng = np.random.default_rng(1)
x = np.linspace(0, 10, 300)
y = 12 * np.exp(-0.5 * x) * np.cos(4 * x + 0.3) + 1 + 0.2 * rng.standard_normal(x.size)
extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
kw = dict(sigma=np.full(x.size, 0.2), workflow="hpc", n_starts=160, batch_size=2,
          bounds=([0, 0, 0, -np.pi, -10], [100, 10, 20, np.pi, 10]), checkpoint_interval=1,
          checkpoint_dir=None if sys.argv[2] == "-" else sys.argv[2], progress_seconds=1e9)
early = extra.pop("signal_before_fit", None)
kw.update(extra)
if early:
    os.kill(os.getpid(), getattr(signal, early))
r = fit(model, x, y, **kw)
r.save(sys.argv[1])
