"""python -m nlsq_mpi: run a job script on every rank, or inspect the environment.

  python -m nlsq_mpi JOB.py [ARGS...]     run JOB.py as __main__ (sys.argv = [JOB.py, ARGS...])
  python -m nlsq_mpi detect               print the detected scheduler, launcher, ranks, GPUs
  mpirun -n 8 python -m nlsq_mpi JOB.py   the same on 8 ranks (srun and PBS mpiexec alike)

Each rank binds to one local GPU (or a share of the CPU cores) before the script starts.
An uncaught exception on any rank prints its traceback and aborts the whole job at once
(MPI_Abort), with exit status 1; a script's own sys.exit(code) keeps its code. Ranks other
than 0 have their stdout silenced unless --all-ranks is given or NLSQ_MPI_ALL_RANKS=1.
"""
import argparse
import os
import runpy
import sys
import traceback


def _run_job(script, args, all_ranks):
    from . import rank
    from .parallel.comm import get_comm
    comm = get_comm()
    quiet = comm.rank != 0 and not (all_ranks or os.environ.get("NLSQ_MPI_ALL_RANKS") == "1")
    if quiet:
        sys.stdout = open(os.devnull, "w")
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if code != 0 and comm.size > 1:
            comm.abort(code)
        return code
    except BaseException:
        sys.stderr.write(f"[nlsq_mpi] rank {rank()}: uncaught exception in {script}:\n")
        traceback.print_exc()
        sys.stderr.flush()
        if comm.size > 1:
            comm.abort(1)
        return 1
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m nlsq_mpi", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all-ranks", action="store_true",
                        help="keep stdout of every rank (default: rank 0 only)")
    parser.add_argument("target", help="JOB.py to run, or 'detect'")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to JOB.py")
    if not argv:
        parser.print_help()
        return 2
    ns = parser.parse_args(argv)
    if ns.target == "detect":
        from . import _BINDING
        from .parallel.comm import get_comm
        from .parallel.detect import detect
        info = detect(get_comm())
        if info.rank == 0 or ns.all_ranks:
            print(info)
            print(f"{'binding':<13}  {_BINDING}")
        return 0
    if not os.path.isfile(ns.target):
        parser.error(f"no such job script: {ns.target}")
    return _run_job(ns.target, ns.args, ns.all_ranks)


if __name__ == "__main__":
    sys.exit(main())
