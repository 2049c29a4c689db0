"""python -m nlsq_mpi: run a job script on every rank, or inspect the environment.

  python -m nlsq_mpi JOB.py [ARGS...]     run JOB.py as __main__ (sys.argv = [JOB.py, ARGS...])
  python -m nlsq_mpi detect               print the detected scheduler, launcher, ranks, GPUs
  python -m nlsq_mpi inspect DIR          summarise the checkpoints in DIR
  mpirun -n 8 python -m nlsq_mpi JOB.py   the same on 8 ranks (srun and PBS mpiexec alike)

Each rank binds to one local GPU (or a share of the CPU cores) before the script starts.
An uncaught exception on any rank prints its traceback and aborts the whole job at once
(MPI_Abort), with exit status 1; a script's own sys.exit(code) keeps its code. An error
nlsq_mpi raises on purpose (bad input, a model that fails, a checkpoint of another problem),
which every rank raises alike, prints one line, "[nlsq_mpi] InputError: ...", once (plus the
traceback of what the model raised, if that was the cause), and every rank exits with
status 2. Should a rank raise one alone, it prints its error and aborts the job after
ERROR_AGREEMENT_SECONDS. A fit stopped
by SIGTERM/SIGUSR1 or its walltime exits with status 75 on every rank after writing its
checkpoint: requeue the job and it resumes. A signal that arrives before a fit starts
(while the script imports or loads data) is kept for it: the fit stops at the end of its
first interval, with a checkpoint, and status 75. Ranks other
than 0 have their stdout silenced unless --all-ranks is given or NLSQ_MPI_ALL_RANKS=1.
"""
import argparse
import os
import runpy
import sys
import time
import traceback

from .preemption import forget_early_signals, record_early_signals

EXIT_FIT_ERROR = 2    # an NlsqError: the message says what to fix
# How long a rank that raised an NlsqError waits for the others to raise one too.
ERROR_AGREEMENT_SECONDS = 10.0


def _run_job(script, args, all_ranks):
    from . import rank
    from .parallel.comm import get_comm
    from .errors import NlsqError
    from .parallel.driver import EXIT_PREEMPTED
    comm = get_comm()
    # A communicator of its own for agreeing on an error: a rank that is still inside a
    # collective of the job cannot mistake that agreement for its own operation. (Its
    # creation is collective: every rank must start through this runner.)
    errors = comm.comm.Dup() if comm.size > 1 else None
    quiet = comm.rank != 0 and not (all_ranks or os.environ.get("NLSQ_MPI_ALL_RANKS") == "1")
    if quiet:
        sys.stdout = open(os.devnull, "w")
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):   # sys.exit("message")
            sys.stderr.write(f"{exc.code}\n")
            sys.stderr.flush()
        # A preempted fit stops on every rank together: no abort, the status carries through.
        if code not in (0, EXIT_PREEMPTED) and comm.size > 1:
            comm.abort(code)
        return code
    except NlsqError as exc:
        return _report_fit_error(exc, comm, errors)
    except BaseException:
        sys.stderr.write(f"[nlsq_mpi] rank {rank()}: uncaught exception in {script}:\n")
        traceback.print_exc()
        sys.stderr.flush()
        if comm.size > 1:
            comm.abort(1)
        return 1
    return 0


def _report_fit_error(exc, comm, errors):
    """Report an NlsqError once. When every rank raised one (within ERROR_AGREEMENT_SECONDS,
    on the ``errors`` communicator), rank 0 prints each distinct message and all ranks exit
    with EXIT_FIT_ERROR; otherwise this rank prints its own and aborts the job."""
    message = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None:   # what the user's model raised
        message += "\n" + "".join(traceback.format_exception(exc.__cause__)).rstrip()
    everyone = errors is not None and _all_arrive(errors, ERROR_AGREEMENT_SECONDS)
    if everyone:
        messages = errors.allgather(message)
        if comm.rank == 0:
            for r, text in enumerate(messages):
                if r == 0 or text not in messages[:r]:
                    sys.stderr.write(f"[nlsq_mpi] {f'rank {r}: ' if r else ''}{text}\n")
    else:
        sys.stderr.write(f"[nlsq_mpi] {f'rank {comm.rank}: ' if comm.rank else ''}{message}\n")
    sys.stderr.flush()
    if comm.size > 1 and not everyone:
        comm.abort(EXIT_FIT_ERROR)
    return EXIT_FIT_ERROR


def _all_arrive(errors, timeout):
    """Whether every rank of ``errors`` enters this barrier within ``timeout`` seconds."""
    request = errors.Ibarrier()
    deadline = time.monotonic() + timeout
    while not request.Test():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def inspect_dir(directory):
    """Print each generation in DIR with its validity, progress, best fit and age, then the
    files set aside as damaged and the final result; status 0 when some generation is
    valid or the fit finished (result.h5), 1 otherwise."""
    import glob
    import time

    import numpy as np

    from .checkpoint import (CheckpointCorrupt, CheckpointUnreadable, CheckpointVersionError,
                             generations, read_generation)
    if not os.path.isdir(directory):
        print(f"{directory}: no such directory")
        return 1
    paths = generations(directory)
    if not paths:
        print(f"{directory}: no checkpoint generations")
    valid = 0
    for path in paths:
        try:
            snap, attrs = read_generation(path)
        except CheckpointCorrupt as exc:
            print(f"{path}: INVALID ({exc})")
            continue
        except CheckpointVersionError as exc:
            print(f"{path}: OTHER VERSION ({exc})")
            continue
        except CheckpointUnreadable as exc:
            print(f"{path}: UNREADABLE ({exc})")
            continue
        valid += 1
        t = snap.table
        done = int(np.sum(t["status"] != -5))
        ok = (t["status"] >= 0) & np.isfinite(t["cost"])
        print(f"{path}: valid, round {snap.round}, {snap.steps} steps, written by {snap.ranks} "
              f"rank(s), {time.time() - snap.created:.0f} s ago")
        print(f"  starts done {done}/{len(t['cost'])}, in flight {len(snap.states['start'])}")
        if ok.any():
            b = int(np.flatnonzero(ok)[np.argmin(t["cost"][ok])])
            print(f"  best cost {t['cost'][b]:.10g} (start {b}), parameters "
                  + " ".join(f"{v:.10g}" for v in t["x"][b]))
    for damaged in sorted(glob.glob(os.path.join(directory, "*.damaged"))):
        print(f"{damaged}: set aside as damaged by a resume")
    final = os.path.join(directory, "result.h5")
    if os.path.exists(final):
        print(f"{final}: the final result of a finished fit")
    return 0 if valid or os.path.exists(final) else 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m nlsq_mpi", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all-ranks", action="store_true",
                        help="keep stdout of every rank (default: rank 0 only)")
    parser.add_argument("target", help="JOB.py to run, 'detect', or 'inspect'")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to JOB.py")
    if not argv:
        parser.print_help()
        return 2
    ns = parser.parse_args(argv)
    if ns.target in ("detect", "inspect"):
        forget_early_signals()
    if ns.target == "detect":
        from . import _BINDING
        from .parallel.comm import get_comm
        from .parallel.detect import detect
        info = detect(get_comm())
        if info.rank == 0 or ns.all_ranks:
            print(info)
            print(f"{'binding':<13}  {_BINDING}")
        return 0
    if ns.target == "inspect":
        if len(ns.args) != 1:
            parser.error("inspect takes one argument: the checkpoint directory")
        try:
            status = inspect_dir(ns.args[0])
            sys.stdout.flush()   # a closed pipe shows here, not at exit
            return status
        except BrokenPipeError:   # piped into head: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if not os.path.isfile(ns.target):
        parser.error(f"no such job script: {ns.target}")
    record_early_signals()   # also when the package was imported some other way
    return _run_job(ns.target, ns.args, ns.all_ranks)


if __name__ == "__main__":
    sys.exit(main())
