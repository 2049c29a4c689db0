"""workflow="hpc" end to end: same answer for any rank count, the runner, failures."""
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from mpi_helpers import JOBS, ROOT, mpirun, run


def _load(path):
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


@pytest.mark.slow
def test_same_result_with_1_2_and_4_ranks(tmp_path):
    results = {}
    for n in (1, 2, 4):
        out = tmp_path / f"r{n}.npz"
        p = mpirun(n, "-m", "nlsq_mpi", str(JOBS / "seed_job.py"), str(out), "40", timeout=400)
        assert p.returncode == 0, p.stderr[-3000:]
        results[n] = _load(out)
    ref = results[1]
    for n in (2, 4):
        r = results[n]
        assert int(r["best_start"]) == int(ref["best_start"])
        np.testing.assert_array_equal(r["popt"], ref["popt"])
        for key in ("starts_x", "starts_cost", "starts_status", "starts_nit", "starts_nfev", "starts_x0"):
            np.testing.assert_array_equal(r[key], ref[key], err_msg=f"{key} with {n} ranks")


def test_same_bits_in_one_process_and_on_two_ranks_where_lanes_step_one_by_one(tmp_path):
    """m=2,000: XLA's CPU contractions split over threads sum in another order, so every
    process on CPU runs them on one thread (a rank of two already did, one process did
    not: 5 of 100 starts of examples/job.py differed in their last bits)."""
    results = []
    for n, cmd in ((1, [sys.executable, "-m", "nlsq_mpi"]),
                   (2, ["mpirun", "-n", "2", sys.executable, "-m", "nlsq_mpi"])):
        out = tmp_path / f"r{n}.npz"
        p = run(cmd + [str(JOBS / "seed_job.py"), str(out), "100", "2000"], timeout=400)
        assert p.returncode == 0, p.stderr[-3000:]
        results.append(_load(out))
    for key in ("popt", "starts_x", "starts_cost", "starts_status", "starts_nit", "starts_nfev"):
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)


def _summary_numbers(text):
    block = text[text.index("nlsq_mpi hpc: best of"):]
    return re.findall(r"p\[\d\] = (\S+)", block), text.count("nlsq_mpi hpc: best of")


@pytest.mark.slow
def test_design_job_three_ways(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--points", "300"],
                   cwd=tmp_path, check=True, timeout=60, capture_output=True)
    job = ROOT / "examples" / "job.py"
    outputs = []
    for cmd in ([sys.executable, str(job)], [sys.executable, "-m", "nlsq_mpi", str(job)],
                ["mpirun", "-n", "2", sys.executable, "-m", "nlsq_mpi", str(job)]):
        p = run(cmd, cwd=tmp_path, timeout=400)
        assert p.returncode == 0, p.stderr[-3000:]
        numbers, count = _summary_numbers(p.stdout + p.stderr)
        assert count == 1, f"summary printed {count} times by {cmd}"
        outputs.append(numbers)
    assert outputs[0] == outputs[1] == outputs[2] and len(outputs[0]) == 5


def test_exception_on_one_rank_aborts_the_job_quickly():
    t0 = time.monotonic()
    p = mpirun(2, "-m", "nlsq_mpi", str(JOBS / "raise_on_rank1.py"), timeout=60)
    elapsed = time.monotonic() - t0
    assert p.returncode != 0
    assert "deliberate failure on rank 1" in p.stderr and "Traceback" in p.stderr
    assert elapsed < 30, f"took {elapsed:.1f} s"


@pytest.mark.parametrize("ranks", [1, 2])
def test_fit_error_is_one_clean_line_and_status_2(ranks):
    """An error nlsq_mpi raises on purpose, identically on every rank, is reported once,
    without a traceback, and the job ends with status 2 (no hang, no duplicate lines)."""
    job = str(JOBS / "bad_bounds_job.py")
    p = (mpirun(2, "-m", "nlsq_mpi", job, timeout=60) if ranks == 2 else
         run([sys.executable, "-m", "nlsq_mpi", job], timeout=60))
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [line for line in p.stderr.splitlines() if line.startswith("[nlsq_mpi]")]
    assert lines == ["[nlsq_mpi] InputError: bounds: lower[1]=5 is not below upper[1]=5"], \
        p.stderr[-2000:]
    assert "Traceback" not in p.stderr


def test_fit_error_on_one_rank_alone_still_ends_the_job():
    t0 = time.monotonic()
    p = mpirun(2, "-m", "nlsq_mpi", str(JOBS / "input_error_on_rank1.py"), timeout=60)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "[nlsq_mpi] rank 1: InputError: p0: deliberate error on rank 1" in p.stderr
    assert time.monotonic() - t0 < 40


def test_model_failure_shows_what_the_model_raised():
    p = mpirun(2, "-m", "nlsq_mpi", str(JOBS / "failing_model_job.py"), timeout=60)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.count("[nlsq_mpi] ModelError: model") == 1, p.stderr[-2000:]
    assert "NameError: name 'undefined_name' is not defined" in p.stderr
    # The model's own traceback, pointing at the user's line, follows the one-line error.
    assert "Traceback (most recent call last)" in p.stderr
    assert 'failing_model_job.py", line 9, in model' in p.stderr


def test_runner_passes_argv_and_exit_status(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import sys\nprint('ARGS', sys.argv)\nsys.exit(int(sys.argv[1]))\n")
    p = run([sys.executable, "-m", "nlsq_mpi", str(script), "3", "x"], timeout=120)
    assert p.returncode == 3
    assert f"ARGS ['{script}', '3', 'x']" in p.stdout
    said = tmp_path / "said.py"
    said.write_text("import sys\nsys.exit('bad data file: please fix')\n")
    p = run([sys.executable, "-m", "nlsq_mpi", str(said)], timeout=120)
    assert p.returncode == 1 and "bad data file: please fix" in p.stderr   # as python says it


def test_only_rank_0_prints_by_default(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import nlsq_mpi\nprint('HELLO from', nlsq_mpi.rank())\n")
    quiet = mpirun(2, "-m", "nlsq_mpi", str(script), timeout=120)
    loud = mpirun(2, "-m", "nlsq_mpi", "--all-ranks", str(script), timeout=120)
    assert quiet.stdout.count("HELLO") == 1 and "HELLO from 0" in quiet.stdout
    assert loud.stdout.count("HELLO") == 2


def test_help_and_detect():
    h = run([sys.executable, "-m", "nlsq_mpi", "--help"], timeout=120)
    assert h.returncode == 0 and "detect" in h.stdout and "--all-ranks" in h.stdout
    d = mpirun(2, "-m", "nlsq_mpi", "detect", timeout=120)
    assert d.returncode == 0
    assert re.search(r"launcher\s+openmpi", d.stdout) and re.search(r"size\s+2", d.stdout)
    assert re.search(r"local_size\s+2", d.stdout) and d.stdout.count("launcher") == 1


def test_gpu_check_script_runs_on_cpu():
    p = mpirun(2, "-m", "nlsq_mpi", str(ROOT / "scripts" / "gpu_check.py"), "--starts", "40",
               timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "rank 1/2 local 1/2" in p.stdout and "40 starts on 2 rank(s)" in p.stdout


def test_rank_with_several_devices_splits_its_lanes(tmp_path):
    """A rank's cores become host devices (two here); they stand in for a rank that sees two
    GPUs too. Each device runs the same single-device program on its slice of the lanes, so
    the per-start table is bitwise the one device's."""
    out1, out2 = tmp_path / "one.npz", tmp_path / "two.npz"
    job = str(JOBS / "seed_job.py")
    one = run([sys.executable, "-m", "nlsq_mpi", job, str(out1), "24"], timeout=300,
              env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    two = run([sys.executable, "-m", "nlsq_mpi", job, str(out2), "24"], timeout=300,
              env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert "lanes split over 2 local devices" in two.stdout
    assert "lanes split" not in one.stdout
    a, b = _load(out1), _load(out2)
    for key in ("popt", "starts_x", "starts_cost", "starts_status", "starts_nit", "starts_nfev"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_ranks_with_different_device_counts_agree_on_the_width(tmp_path):
    """Rank 0 sees one host device, rank 1 two: all ranks must run the same width, or the
    shared queue is cut differently on each and starts are lost or the job hangs."""
    out1, out2 = tmp_path / "one.npz", tmp_path / "mixed.npz"
    job = str(JOBS / "seed_job.py")
    one = run([sys.executable, "-m", "nlsq_mpi", job, str(out1), "24"], timeout=300,
              env={"XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    flags = "XLA_FLAGS=--xla_force_host_platform_device_count="
    mixed = run(["mpirun", "-n", "1", "env", flags + "1", sys.executable, "-m", "nlsq_mpi", job,
                 str(out2), "24", ":", "-n", "1", "env", flags + "2", sys.executable, "-m",
                 "nlsq_mpi", job, str(out2), "24"], timeout=300)
    assert one.returncode == 0 and mixed.returncode == 0, mixed.stderr[-2000:]
    a, b = _load(out1), _load(out2)
    assert np.all(b["starts_status"] > 0)
    for key in ("popt", "starts_x", "starts_cost", "starts_status", "starts_nit", "starts_nfev"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_second_device_program_is_built_in_the_background():
    p = run([sys.executable, str(JOBS / "lane_devices_job.py")], timeout=300,
            env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                 "PYTHONPATH": str(ROOT / "tests")})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == \
        '{"devices": 2, "built_at_first": false, "built_later": true, ' \
        '"device_1_program_calls": 1, "same": true}'
