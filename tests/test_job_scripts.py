"""The SLURM and PBS scripts: syntax, and a dry run with stub scheduler commands."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["slurm_job.sh", "pbs_job.sh"])
def test_script_parses(script):
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], check=True, timeout=30)


def _stubs(tmp_path, job_status):
    """srun/mpiexec run the job script's exit status; scontrol/qsub record their arguments."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    log = tmp_path / "calls.log"
    for name in ("srun", "mpiexec"):
        (bin_ / name).write_text(f"#!/bin/bash\necho {name} \"$@\" >> {log}\n"
                                 f"echo walltime ${{NLSQ_MPI_WALLTIME:-}} >> {log}\n"
                                 f"exit {job_status}\n")
    for name in ("scontrol", "qsub"):
        (bin_ / name).write_text(f"#!/bin/bash\necho {name} \"$@\" >> {log}\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    return bin_, log


@pytest.mark.parametrize("job_status", [0, 75])
def test_slurm_script_requeues_on_status_75(tmp_path, job_status):
    bin_, log = _stubs(tmp_path, job_status)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_JOB_ID": "99",
           "NLSQ_MPI_PYTHON": sys.executable}
    p = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_job.sh"), "job.py", "--flag"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == job_status
    calls = log.read_text()
    assert f"srun {sys.executable} -m nlsq_mpi job.py --flag" in calls
    assert ("scontrol requeue 99" in calls) == (job_status == 75)


@pytest.mark.parametrize("job_status, walltime, stop_at", [(0, 3600, 3300), (75, 3600, 3300),
                                                           (75, 300, 270)])
def test_pbs_script_resubmits_on_status_75(tmp_path, job_status, walltime, stop_at):
    """Also: a short job keeps a positive walltime (a fixed 5-minute margin gave 0 for a
    5-minute job, which stopped and resubmitted itself forever)."""
    bin_, log = _stubs(tmp_path, job_status)
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\n")
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "PBS_NODEFILE": str(nodefile),
           "PBS_O_WORKDIR": str(tmp_path), "JOB": "job.py", "PBS_WALLTIME": str(walltime),
           "NLSQ_MPI_PYTHON": sys.executable}
    env.pop("NLSQ_MPI_WALLTIME", None)
    p = subprocess.run(["bash", str(ROOT / "scripts" / "pbs_job.sh")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == job_status
    calls = log.read_text()
    assert f"mpiexec -n 3 {sys.executable} -m nlsq_mpi job.py" in calls
    assert f"walltime {stop_at}\n" in calls
    assert ("qsub -v JOB=job.py" in calls) == (job_status == 75)


@pytest.mark.parametrize("script", ["slurm_job.sh", "pbs_job.sh"])
def test_a_signal_to_the_batch_shell_reaches_the_job_and_requeues(tmp_path, script):
    """The scheduler's SIGTERM (or USR1) to the batch shell: the shell survives, passes
    SIGUSR1 to the job step (here a stub that exits 75 on it, as the ranks do after their
    checkpoint) and requeues or resubmits."""
    bin_, log = _stubs(tmp_path, 0)
    for name in ("srun", "mpiexec"):
        (bin_ / name).write_text(f"#!/bin/bash\ntrap 'echo {name} got USR1 >> {log}; kill $nap; "
                                 f"exit 75' USR1\nsleep 30 & nap=$!\necho started >> {log}\n"
                                 "wait\nexit 0\n")
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\n")
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_JOB_ID": "99",
           "PBS_NODEFILE": str(nodefile), "PBS_O_WORKDIR": str(tmp_path), "JOB": "job.py",
           "NLSQ_MPI_PYTHON": sys.executable}
    p = subprocess.Popen(["bash", str(ROOT / "scripts" / script), "job.py"], env=env,
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (log.exists() and "started" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 75, err
    calls = log.read_text()
    assert "got USR1" in calls
    assert ("scontrol requeue 99" if script == "slurm_job.sh" else "qsub -v JOB=job.py") in calls
