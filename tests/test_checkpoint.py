"""Checkpoints: exact continuation after kills, elastic resume, damage, preemption."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mpi_helpers import JOBS, MPI_ENV, ROOT, mpirun, run
from nlsq_mpi.checkpoint import generations, read_generation

JOB = str(JOBS / "ckpt_job.py")
KEYS = ("popt", "best_start", "starts_x", "starts_cost", "starts_status", "starts_nit", "starts_nfev")


def _load(path):
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def _assert_same(a, b):
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (no checkpoints) on 2 ranks."""
    out = tmp_path_factory.mktemp("ref") / "ref.npz"
    p = mpirun(2, "-m", "nlsq_mpi", JOB, str(out), "-", timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    return _load(out)


def _start(n, out, ckpt, env=None):
    cmd = ["mpirun", "-n", str(n), sys.executable, "-m", "nlsq_mpi", JOB, str(out), str(ckpt)]
    return subprocess.Popen(cmd, env={**os.environ, **MPI_ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for_generation(ckpt, round_at_least, proc, timeout=300):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        gens = generations(ckpt)
        if gens and int(Path(gens[0]).stem.split("-")[1]) >= round_at_least:
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def _finish(n, out, ckpt):
    p = mpirun(n, "-m", "nlsq_mpi", JOB, str(out), str(ckpt), timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _killed_between(ckpt, ranks=2):
    """The round a job of ``ranks`` ranks was killed in before its rename: the newest
    temporary, newer than every generation in place. Besides it, each rank's publisher
    thread may have held one file and had one waiting; as the lead of a collective write
    changes from round to round, a file one rank's publisher still held can be older than
    a generation another rank's publisher had already put in place."""
    rounds = sorted(int(f.name.split("-")[2]) for f in ckpt.iterdir()
                    if f.name.startswith(".tmp-gen-"))
    newest = int(Path(generations(ckpt)[0]).stem.split("-")[1])
    assert rounds and rounds[-1] > newest and len(rounds) <= 2 * ranks + 1, (newest, rounds)
    return rounds[-1]


@pytest.mark.slow
@pytest.mark.parametrize("round_", [3, 40])
def test_sigkill_then_resume_is_exact(tmp_path, reference, round_):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
    proc = _start(2, out, ckpt)
    _wait_for_generation(ckpt, round_, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists()
    p = _finish(2, out, ckpt)
    assert "resuming from" in p.stdout
    _assert_same(_load(out), reference)


@pytest.mark.slow
def test_kill_during_checkpoint_write_then_resume_is_exact(tmp_path, reference):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
    proc = _start(2, out, ckpt, env={"NLSQ_MPI_FAULT": "kill-before-rename:20"})
    proc.wait(timeout=400)
    assert proc.returncode != 0
    assert _killed_between(ckpt) == 20
    _finish(2, out, ckpt)
    assert not any(f.name.startswith(".tmp-") for f in ckpt.iterdir())
    _assert_same(_load(out), reference)


@pytest.mark.slow
def test_kill_during_a_write_by_an_idle_rank_then_resume_is_exact(tmp_path, reference):
    """In the tail one idle rank writes each generation alone: every rank dies once the
    first such file is written and before it is renamed; the rerun resumes from the
    generation before it and finishes with the uninterrupted run's bits."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
    proc = _start(2, out, ckpt, env={"NLSQ_MPI_FAULT": "kill-before-rename:idle"})
    proc.wait(timeout=400)
    assert proc.returncode != 0
    _killed_between(ckpt)
    newest = generations(ckpt)[0]
    p = _finish(2, out, ckpt)
    assert newest in p.stdout   # "resuming from ..."
    assert not any(f.name.startswith(".tmp-") for f in ckpt.iterdir())
    _assert_same(_load(out), reference)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_writes_checkpoint_and_exits_75(tmp_path, reference, sig):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
    proc = _start(2, out, ckpt, env={"NLSQ_MPI_FAULT": "slow-after:5"})
    _wait_for_generation(ckpt, 5, proc)
    os.kill(proc.pid, sig)          # to mpirun, which forwards it to the ranks
    stdout, err = proc.communicate(timeout=120)
    assert "stop requested: checkpoint written; exiting with status 75" in stdout, err[-2000:]
    # mpirun passes the ranks' status on for SIGUSR1; for SIGTERM, which ends mpirun
    # itself, Open MPI reports its own status 1.
    assert proc.returncode == (75 if sig == signal.SIGUSR1 else 1), err[-2000:]
    snap, _ = read_generation(generations(ckpt)[0])
    assert np.any(snap.table["status"] == -5) or len(snap.states["start"]) > 0
    _finish(2, out, ckpt)
    _assert_same(_load(out), reference)


def test_sigterm_without_mpirun_exits_75(tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
    proc = subprocess.Popen([sys.executable, "-m", "nlsq_mpi", JOB, str(out), str(ckpt)],
                            env={**os.environ, **MPI_ENV, "NLSQ_MPI_FAULT": "slow-after:3"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_generation(ckpt, 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert not out.exists() and generations(ckpt)


def test_a_signal_before_the_fit_stops_it_with_a_checkpoint(tmp_path):
    """Preemption while the script still imports or loads its data: the runner keeps the
    signal, the fit stops after its first interval with a checkpoint and status 75 (not
    killed unsaved with 138), and the rerun finishes."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
    p = run([sys.executable, "-m", "nlsq_mpi", JOB, str(out), str(ckpt),
             '{"signal_before_fit": "SIGUSR1", "n_starts": 6}'], timeout=300)
    assert p.returncode == 75, p.stderr[-2000:]
    assert "stop requested: checkpoint written" in p.stdout and "(SIGUSR1 on rank 0)" in p.stdout
    snap, _ = read_generation(generations(ckpt)[0])
    assert snap.round == 1 and not out.exists()
    p = run([sys.executable, "-m", "nlsq_mpi", JOB, str(out), str(ckpt), '{"n_starts": 6}'],
            timeout=300)
    assert p.returncode == 0 and out.exists(), p.stderr[-2000:]


def test_a_signal_while_the_package_loads_is_kept(tmp_path):
    """The runner keeps a stop signal from the first lines of the package on, before jax
    loads (half a second here): one sent 0.15 s after the start stops the fit after its
    first interval with a checkpoint and 75, where it used to kill the job with 138."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
    proc = subprocess.Popen([sys.executable, "-m", "nlsq_mpi", JOB, str(out), str(ckpt),
                             '{"n_starts": 6}'], env={**os.environ, **MPI_ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.15)
    proc.send_signal(signal.SIGUSR1)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-2000:]
    assert "(SIGUSR1 on rank 0)" in stdout and generations(ckpt) and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 3])
def test_elastic_resume_with_other_rank_counts(tmp_path, reference, ranks):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
    p = mpirun(2, "-m", "nlsq_mpi", JOB, str(out), str(ckpt), '{"walltime": 7}', timeout=400)
    assert p.returncode == 75, p.stderr[-2000:]
    snap, _ = read_generation(generations(ckpt)[0])
    assert snap.ranks == 2 and np.any(snap.table["status"] == -5)
    _finish(ranks, out, ckpt)
    _assert_same(_load(out), reference)


def test_inspect_reports_generations(tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
    p = run([sys.executable, JOB, str(out), str(ckpt), '{"n_starts": 6}'], timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    shutil.copy(generations(ckpt)[0], ckpt / "gen-999999999.h5")
    with open(ckpt / "gen-999999999.h5", "r+b") as fh:
        fh.truncate(1000)
    (ckpt / "gen-000000001.h5.damaged").write_bytes(b"set aside")
    r = run([sys.executable, "-m", "nlsq_mpi", "inspect", str(ckpt)], timeout=120)
    assert r.returncode == 0
    assert "gen-999999999.h5: INVALID" in r.stdout
    assert "valid, round" in r.stdout and "starts done 6/6" in r.stdout and "best cost" in r.stdout
    assert "gen-000000001.h5.damaged: set aside as damaged" in r.stdout
    assert "result.h5: the final result" in r.stdout
    for path in generations(ckpt)[1:] + [ckpt / "result.h5"]:   # only the invalid one left
        os.remove(path)
    r = run([sys.executable, "-m", "nlsq_mpi", "inspect", str(ckpt)], timeout=120)
    assert r.returncode == 1 and "INVALID" in r.stdout
    r = run([sys.executable, "-m", "nlsq_mpi", "inspect", str(ckpt / "nope")], timeout=120)
    assert r.returncode == 1 and "nope: no such directory" in r.stdout
