"""Device binding: one local GPU per rank, or a share of the node's cores on CPU.

``bind_before_jax`` runs before JAX initialises its backends (the runner calls it before the
job script starts; importing nlsq_mpi calls it too): it narrows CUDA_VISIBLE_DEVICES to one
GPU, local rank modulo the GPUs this rank may see (honouring a list the scheduler set), and
on CPU gives each of the node's ranks cores // ranks threads, and ``use_host_devices`` one
host device per thread (up to MAX_HOST_DEVICES).
``compute_devices`` is the explicit placement used when the script had initialised JAX
first; ``LaneDevices`` runs a batch's lanes on this rank's device(s).
"""
import logging
import os
import threading
import time
import weakref

import numpy as np

from .detect import from_environment


MAX_HOST_DEVICES = 8


def _gpu_ids(environ):
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        return [str(i) for i in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
    except OSError:
        return []


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def bind_before_jax(environ=os.environ):
    """Set this rank's device and thread environment; returns a one-line description."""
    if environ.get("NLSQ_MPI_NO_BIND"):
        return "binding disabled (NLSQ_MPI_NO_BIND)"
    info = from_environment(environ)
    gpus = _gpu_ids(environ)
    if gpus:
        mine = gpus[info.local_rank % len(gpus)]
        if info.local_size > 1 or len(gpus) > 1:
            environ["CUDA_VISIBLE_DEVICES"] = mine if info.local_size >= len(gpus) else \
                ",".join(gpus[info.local_rank::info.local_size])
        return f"local rank {info.local_rank}: GPU(s) {environ.get('CUDA_VISIBLE_DEVICES', mine)}"
    threads = _threads(info)
    # XLA's CPU contractions split over threads sum in another order, so a start's last
    # bits would depend on how many cores its process had: every process runs them on one
    # thread (up to MAX_HOST_DEVICES of its cores become host devices instead, each with its
    # own slice of the lanes).
    flags = environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    if info.local_size > 1:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            environ.setdefault(var, str(threads))
    return (f"local rank {info.local_rank} of {info.local_size}: CPU, {threads} thread(s), "
            f"{host_devices(environ) or 1} host device(s)")


def _threads(info):
    return max(1, _cores() // max(1, info.local_size))


def host_devices(environ=os.environ):
    """How many host devices this rank's share of the cores becomes, or None to leave JAX's
    default (one) alone: with GPUs, binding disabled, or a device count in XLA_FLAGS.

    XLA runs one host device's program mostly on one core (a batch of 16 lanes at m=2,000
    kept 1.3 of 2 cores busy), so a rank with several cores runs as many host devices,
    each with its own slice of the lanes; at most MAX_HOST_DEVICES, since each compiles
    (or loads from the cache) its own copy of the program."""
    if (environ.get("NLSQ_MPI_NO_BIND") or _gpu_ids(environ)
            or "xla_force_host_platform_device_count" in environ.get("XLA_FLAGS", "")):
        return None
    threads = _threads(from_environment(environ))
    return min(threads, MAX_HOST_DEVICES) if threads > 1 else None


def use_host_devices(count):
    """Ask JAX for ``count`` host devices: a setting of this process only (an XLA_FLAGS
    entry would reach every child process, MPI ranks included). Without effect once the
    script has run JAX code: then one host device."""
    import jax
    if count and jax.config.jax_num_cpu_devices < 0:
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError:
            pass


def compute_devices(local_rank, local_size):
    """The devices this rank's lanes run on.

    Normally every local device JAX sees (one GPU after binding; several when the scheduler
    gave this rank several). When the script had initialised JAX before nlsq_mpi could bind,
    every rank on the node sees all of the node's GPUs: then each rank takes one explicitly,
    local rank modulo their number."""
    import jax
    devices = jax.local_devices()
    gpus = [d for d in devices if d.platform == "gpu"]
    if local_size > 1 and len(gpus) > 1 and len(gpus) >= local_size:
        share = len(gpus) // local_size
        return gpus[local_rank * share:(local_rank + 1) * share]
    return devices


class LaneDevices:
    """Runs a batch's lanes on several local devices: the lanes are cut into one slice per
    device (equal when the width is a multiple of their number, as fit() makes it) and each
    slice goes through the same single-device program, dispatched asynchronously so the
    devices work at once. A slice with no running lane is not dispatched.

    A lane's result is the same bits on any number of devices; one program over a device
    mesh was not (``shard_map``, or XLA partitioning the batched program, changed the last
    bit of up to 28 of 100 starts). Each device needs its own copy of the program (JAX's
    cache key holds the device on CPU): the first device's is built in the calling thread,
    the others' in background threads (XLA releases the GIL while it compiles), and until
    a device's copy is ready its slice runs on the first device, with the same program."""

    def __init__(self, devices, problem):
        import jax
        self.devices = list(devices)
        self.problems = [jax.device_put(problem, d) for d in self.devices]
        # Whether every device ran its own program in the last call (a long call made
        # before then would keep a device's lanes on the first device throughout).
        self.all_built = len(self.devices) == 1

    def advance(self, advance, state, n_steps, running):
        """``advance`` applied to every device's slice of the host ``state``; ``running``
        (per lane) says which slices have work. Returns host arrays."""
        import jax
        k, width, n_steps = len(self.devices), len(running), int(n_steps)
        pieces, built = [], True
        for i, (device, problem) in enumerate(zip(self.devices, self.problems)):
            lanes = slice(i * width // k, (i + 1) * width // k)
            part = jax.tree.map(lambda a: a[lanes], state)
            program = _program(advance, device, problem, part, n_steps) if i else None
            built = built and (i == 0 or program is not None)
            if not running[lanes].any():
                pieces.append(part)
                continue
            if program is None:   # the first device, or this one's copy is not built yet
                pieces.append(advance(self.problems[0], jax.device_put(part, self.devices[0]),
                                      n_steps))
            else:
                pieces.append(program(problem, jax.device_put(part, device), n_steps))
        self.all_built = built
        return jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *pieces)


# advance -> {(device id, argument types): compiled program, or None while it is built}.
# Weakly keyed, so a solver dropped from compiled_solver's cache takes its programs along.
_PROGRAMS = weakref.WeakKeyDictionary()
_PROGRAMS_LOCK = threading.Lock()
_PROGRAMS_PER_SOLVER = 32
_BUILDS = []   # background build threads, until wait_for_builds sees them finish


def program_key(device, problem, part):
    """What a compiled program is specific to: the device and every argument's abstract
    type (shape, dtype and weak type: a program lowered for a Python float accepts a
    NumPy float without complaint, and computes other bits)."""
    import jax
    leaves, tree = jax.tree.flatten((problem, part))
    return device.id, tree, tuple(jax.typeof(a) for a in leaves)


def _program(advance, device, problem, part, n_steps):
    """``advance`` compiled for ``device``, or None while a background thread builds it.
    It is lowered here, under the caller's JAX settings, and only compiled in the thread.
    A build that fails leaves the slice on the first device for the rest of the process."""
    import jax
    key = program_key(device, problem, part)
    with _PROGRAMS_LOCK:
        programs = _PROGRAMS.setdefault(advance, {})
        if key in programs:
            return programs[key]
        if len(programs) >= _PROGRAMS_PER_SOLVER:
            programs.clear()
        programs[key] = None
    lowered = advance.lower(problem, jax.device_put(part, device), n_steps)

    def build():
        try:
            program = lowered.compile()
        except Exception as exc:   # the slice keeps running on the first device
            logging.getLogger("nlsq_mpi").warning("compiling for %s failed (%s); its lanes "
                                                  "run on the first device", device, exc)
            return
        with _PROGRAMS_LOCK:
            programs[key] = program

    thread = threading.Thread(target=build, name=f"nlsq_mpi-compile-{device.id}")
    with _PROGRAMS_LOCK:
        _BUILDS[:] = [t for t in _BUILDS if t.is_alive()] + [thread]
    thread.start()
    return None


def wait_for_builds(timeout=None):
    """Wait for the background program builds started so far; False if some still run after
    ``timeout`` seconds. For benchmarks and tests, which time or inspect the steady state:
    a fit never waits (its slices run on the first device meanwhile)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _PROGRAMS_LOCK:
        threads = list(_BUILDS)
    for thread in threads:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    with _PROGRAMS_LOCK:
        _BUILDS[:] = [t for t in _BUILDS if t.is_alive()]
        return not _BUILDS
