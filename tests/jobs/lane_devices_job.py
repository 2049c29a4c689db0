"""Test job (2 host devices): the second device's program is built in the background; until
then its slice runs on the first device, and both give the same bits. Prints one JSON line."""
import json

import numpy as np

import jax
from conftest import SEED_BOUNDS, seed_data, seed_model
from nlsq_mpi.api import make_problem
from nlsq_mpi.parallel import devices as dev
from nlsq_mpi.solver import Options, compiled_solver, init_state
from nlsq_mpi.starts import start_points
from nlsq_mpi.validation import check

x, y, s = seed_data()
c = check(seed_model, x, y, None, s, SEED_BOUNDS, "auto_global", 8, "sobol", "linear", 1.0, 1.0,
          1e-8, 1e-8, 1e-8, None, True, 10, None, None, None)
problem = make_problem(c, 1.0, 1e-8, 1e-8, 1e-8, None)
advance = compiled_solver(seed_model, None, Options(sigma_kind="1d")).advance
x0 = start_points("sobol", 0, *SEED_BOUNDS, np.arange(8), 8)
state = jax.tree.map(np.asarray, init_state(x0, c.lb, c.ub, c.x_scale_inv))
lanes = dev.LaneDevices(jax.devices()[:2], problem)
running = np.ones(8, bool)
first = lanes.advance(advance, state, 5, running)      # lanes 4-7 on device 0 for now
built_at_first = lanes.all_built                       # the driver does not drain yet
assert dev.wait_for_builds(timeout=120), "device 1's program was never built"
programs = dev._PROGRAMS[advance]
key = next(key for key, program in programs.items() if key[0] == 1 and program is not None)
calls = []
program = programs[key]
programs[key] = lambda *args: calls.append(1) or program(*args)
later = lanes.advance(advance, state, 5, running)      # lanes 4-7 on device 1
print(json.dumps({"devices": len(jax.devices()), "built_at_first": built_at_first,
                  "built_later": lanes.all_built, "device_1_program_calls": len(calls),
                  "same": all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first),
                                                                    jax.tree.leaves(later)))}))
