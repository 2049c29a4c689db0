"""Damaged or foreign checkpoints, in one process: detected, reported, never overwritten."""
import errno
import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import SEED_BOUNDS, seed_data, seed_model
from nlsq_mpi import fit
from nlsq_mpi.__main__ import inspect_dir
from nlsq_mpi import checkpoint as checkpoint_module
from nlsq_mpi.checkpoint import (SCHEMA_VERSION, CheckpointMismatch, CheckpointUnreadable,
                                 CheckpointVersionError, generations, writing_advice)
from nlsq_mpi.result import writing_cost
from nlsq_mpi.solver import SolverState

KW = dict(bounds=SEED_BOUNDS, workflow="hpc", n_starts=12, batch_size=4, checkpoint_interval=2,
          progress_seconds=1e9)


def _fit(ckpt, y=None, **extra):
    x, y0, s = seed_data()
    return fit(seed_model, x, y0 if y is None else y, sigma=s, checkpoint_dir=ckpt, **KW, **extra)


@pytest.fixture
def finished(tmp_path):
    r = _fit(tmp_path)
    gens = generations(tmp_path)
    assert len(gens) == 2 and (tmp_path / "result.h5").exists()
    return tmp_path, r, gens


def _damage_bytes(path):
    with h5py.File(path, "r") as fh:   # where the per-start table's raw data lies
        offset = fh["table"].id.get_offset()
    data = bytearray(Path(path).read_bytes())
    for i in range(offset + 100, offset + 300):   # flip bytes inside the stored records
        data[i] ^= 0xFF
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "flip", "fingerprint", "meta", "missing"])
def test_damaged_newest_generation_falls_back_to_previous(finished, damage, caplog):
    """Also a damaged attribute: the checksum covers them, so a changed digit of the
    fingerprint reads as damage, not as another problem, and the previous one is used."""
    ckpt, ref, (newest, previous) = finished
    if damage == "truncate":
        with open(newest, "r+b") as fh:
            fh.truncate(os.path.getsize(newest) // 2)
    elif damage == "flip":
        _damage_bytes(newest)
    elif damage in ("fingerprint", "meta"):
        with h5py.File(newest, "r+") as fh:
            text = fh.attrs[damage]
            i = text.index("4") if damage == "meta" else 0
            fh.attrs[damage] = text[:i] + ("5" if text[i] != "5" else "6") + text[i + 1:]
    else:
        os.remove(newest)
    with caplog.at_level(logging.WARNING, logger="nlsq_mpi"):
        r = _fit(ckpt)
    assert r.resumed_from == previous
    if damage != "missing":
        assert "damaged" in caplog.text and Path(newest).name in caplog.text
    np.testing.assert_array_equal(r.starts.x, ref.starts.x)
    assert r.best_start == ref.best_start


def test_all_generations_damaged_starts_clean(finished):
    ckpt, ref, gens = finished
    for g in gens:
        with open(g, "r+b") as fh:
            fh.truncate(100)
    r = _fit(ckpt)
    assert r.resumed_from is None
    np.testing.assert_array_equal(r.starts.x, ref.starts.x)


def test_other_problem_raises_and_overwrites_nothing(finished):
    """Also: the error classes the README names are nlsq_mpi's own names."""
    import nlsq_mpi
    assert nlsq_mpi.CheckpointMismatch is CheckpointMismatch
    assert issubclass(nlsq_mpi.CheckpointVersionError, nlsq_mpi.CheckpointMismatch)
    assert nlsq_mpi.CheckpointUnreadable is CheckpointUnreadable
    ckpt, _, gens = finished
    before = {p: Path(p).read_bytes() for p in gens}
    x, y, s = seed_data()
    with pytest.raises(CheckpointMismatch, match=r"different problem \(differs in: ydata\).*nothing was overwritten"):
        _fit(ckpt, y=y + 1.0)
    assert {p: Path(p).read_bytes() for p in generations(ckpt)} == before


def test_resume_false_starts_over_and_keep_checkpoints_false_cleans_up(finished):
    ckpt, ref, _ = finished
    x, y, s = seed_data()
    r = _fit(ckpt, y=y + 1.0, resume=False, keep_checkpoints=False)
    assert r.resumed_from is None and generations(ckpt) == []
    assert (Path(ckpt) / "result.h5").exists()
    # The old generations, set aside at the open, are gone too.
    assert not list(Path(ckpt).glob(".tmp-*"))


def test_finished_run_resumes_to_the_same_result(finished):
    """And writes nothing: no generation with nothing done (and inflated steps) on top."""
    ckpt, ref, gens = finished
    r = _fit(ckpt)
    assert r.resumed_from == gens[0]
    np.testing.assert_array_equal(r.popt, ref.popt)
    assert generations(ckpt) == gens and r.checkpoint["writes"] == 0


def test_auto_global_checkpoints_and_resumes_too(tmp_path):
    x, y, s = seed_data()
    kw = dict(KW, workflow="auto_global")
    first = fit(seed_model, x, y, sigma=s, checkpoint_dir=tmp_path, **kw)
    assert generations(tmp_path) and first.checkpoint["writes"] > 0
    again = fit(seed_model, x, y, sigma=s, checkpoint_dir=tmp_path, **kw)
    assert again.resumed_from == generations(tmp_path)[0]   # the final generation of run 1
    np.testing.assert_array_equal(again.starts.x, first.starts.x)


def test_schema_reads_with_plain_h5py(finished):
    """The documented schema (nlsq_mpi/checkpoint.py, README) with nothing but h5py."""
    _, ref, (newest, _) = finished
    with h5py.File(newest, "r") as fh:
        assert fh.attrs["schema_version"] == SCHEMA_VERSION == 3
        meta = json.loads(fh.attrs["meta"])
        table, state = fh["table"][...], fh["state"][...]
        np.testing.assert_array_equal(table["x0"], ref.starts.x0)
        np.testing.assert_array_equal(table["x"], ref.starts.x)     # the final generation
        np.testing.assert_array_equal(table["nfev"], ref.starts.nfev)
        assert meta["best_start"] == ref.best_start and meta["n_starts"] == 12
        np.testing.assert_array_equal(fh["best_x"][...], ref.popt)
        assert state.dtype.names[0] == "start" and set(SolverState._fields) <= set(state.dtype.names)


def test_final_result_reads_with_plain_h5py(finished):
    """checkpoint_dir/result.h5: the result's arrays as datasets, its scalars as attributes."""
    ckpt, ref, _ = finished
    with h5py.File(Path(ckpt) / "result.h5", "r") as fh:
        np.testing.assert_array_equal(fh["popt"][...], ref.popt)
        np.testing.assert_array_equal(fh["pcov"][...], ref.pcov)
        np.testing.assert_array_equal(fh["starts_x"][...], ref.starts.x)
        np.testing.assert_array_equal(fh["starts_status"][...], ref.starts.status)
        assert fh.attrs["cost"] == ref.cost and fh.attrs["best_start"] == ref.best_start
        assert fh.attrs["workflow"] == "hpc" and fh.attrs["message"] == ref.message
        assert bool(fh.attrs["success"]) == ref.success


def test_a_failed_publish_is_raised_not_lost(tmp_path, monkeypatch):
    """The fsync and rename run in a thread; their error (a full disk) ends the fit."""
    import nlsq_mpi.checkpoint as checkpoint

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        _fit(tmp_path)
    assert generations(tmp_path) == []


def test_other_schema_version_raises_and_sets_nothing_aside(finished, capsys):
    """A checkpoint from another nlsq_mpi schema is not damage: the fit stops with a clear
    error and the file stays where it is, for the version that wrote it."""
    ckpt, _, gens = finished
    with h5py.File(gens[0], "r+") as fh:
        fh.attrs["schema_version"] = 1
    before = {p: Path(p).read_bytes() for p in gens}
    with pytest.raises(CheckpointVersionError, match=r"schema version 1; this nlsq_mpi reads "
                       rf"version {SCHEMA_VERSION}.*nothing was overwritten"):
        _fit(ckpt)
    assert {p: Path(p).read_bytes() for p in gens} == before
    assert not list(Path(ckpt).glob("*.damaged"))
    assert inspect_dir(str(ckpt)) == 0
    assert "OTHER VERSION" in capsys.readouterr().out


def test_an_error_after_the_loop_leaves_the_last_generation_in_place(tmp_path, monkeypatch):
    """An error while the result is assembled (every start failed, say) propagates only
    once the last generation is in place: a process that then aborts keeps it, and a refit
    in the same directory cannot meet an old publisher still renaming."""
    import time as time_mod

    import nlsq_mpi.api as api
    from nlsq_mpi.checkpoint import Checkpointer
    publish = Checkpointer._publish

    def slow_publish(self, tmp, round_):
        time_mod.sleep(0.2)
        publish(self, tmp, round_)

    def failing_assembly(*args):
        raise RuntimeError("assembly failed")

    monkeypatch.setattr(Checkpointer, "_publish", slow_publish)
    monkeypatch.setattr(api, "assemble_result", failing_assembly)
    with pytest.raises(RuntimeError, match="assembly failed"):
        _fit(tmp_path)
    assert not list(tmp_path.glob(".tmp-*"))
    newest = generations(tmp_path)[0]
    from nlsq_mpi.checkpoint import read_generation
    snap, _ = read_generation(newest)
    assert (snap.table["status"] != -5).all()   # the fit's last, finished generation


def test_a_late_publisher_tolerates_newer_generations_in_place(tmp_path):
    """Rank 0's publisher can still be in its fsync while an idle rank puts two newer
    generations in place: the late one's rename makes its file the third newest, which its
    own clean-up removes. That is no error, and the two newest stay."""
    from nlsq_mpi.checkpoint import Checkpointer
    from nlsq_mpi.parallel.comm import SerialComm

    ckpt = Checkpointer(SerialComm(), tmp_path, {}, logging.getLogger("test"))
    for round_ in (11, 12):
        (tmp_path / f"gen-{round_:09d}.h5").write_bytes(b"newer")
    late = tmp_path / ".tmp-gen-000000010-late.h5"
    late.write_bytes(b"x" * 1234)
    ckpt._publish(late, 10)
    assert [Path(p).name for p in generations(tmp_path)] == ["gen-000000012.h5",
                                                             "gen-000000011.h5"]
    assert ckpt.published == (10, 1234) and not late.exists()


def test_a_file_the_system_cannot_read_stops_the_fit_and_sets_nothing_aside(finished,
                                                                             monkeypatch):
    """Permissions or an I/O error are not damage: setting every generation aside would
    silently start the job over."""
    ckpt, _, gens = finished

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, f"Unable to open file (Permission denied: {path})")

    monkeypatch.setattr(h5py, "File", refused)
    with pytest.raises(CheckpointUnreadable, match=r"cannot read .*gen-.*Permission denied.*"
                       r"nothing was changed"):
        _fit(ckpt)
    monkeypatch.undo()
    assert generations(ckpt) == gens and not list(Path(ckpt).glob("*.damaged"))


def test_checkpoint_seconds_writes_by_the_clock(tmp_path):
    """checkpoint_seconds replaces the write at every interval by one at the first interval
    end that many seconds after the last write (and the final one always)."""
    every = _fit(tmp_path / "every").checkpoint["writes"]
    rarely = _fit(tmp_path / "rarely", checkpoint_seconds=1e6)
    assert every > 3 and rarely.checkpoint["writes"] == 1     # the final generation only
    assert _fit(tmp_path / "often", checkpoint_seconds=1e-9).checkpoint["writes"] == every
    np.testing.assert_array_equal(rarely.starts.x, _fit(tmp_path / "again").starts.x)


def test_a_checkpoint_dir_that_cannot_be_made_is_an_input_error(tmp_path):
    from nlsq_mpi import InputError
    taken = tmp_path / "a_file"
    taken.write_text("not a directory")
    with pytest.raises(InputError, match=r"checkpoint_dir: cannot use '.*a_file': .*File exists"):
        _fit(taken)
    assert taken.read_text() == "not a directory"


def test_a_bad_walltime_in_the_environment_clears_nothing(finished, monkeypatch):
    """resume=False would clear the directory: the environment is checked before that."""
    from nlsq_mpi import InputError
    ckpt, _, gens = finished
    monkeypatch.setenv("NLSQ_MPI_WALLTIME", "abc")
    with pytest.raises(InputError, match="NLSQ_MPI_WALLTIME: 'abc' is not a positive time"):
        _fit(ckpt, resume=False)
    assert generations(ckpt) == gens


def test_writing_advice_names_the_share_and_a_checkpoint_seconds():
    """The seed bench at batch_size=16: 72 writes of 5.7 ms in a 2.31 s fit, 71 of them
    collective (0.40 s that every rank stopped for); at the default lanes 25 writes, 9% of
    the fit in all but 2% collective: no warning then."""
    stats = {"writes": 72, "write_seconds": 0.41, "collective_seconds": 0.40, "fit_seconds": 2.31}
    text = writing_advice(stats, 10)
    assert text == ("checkpoints held up this fit for 17% of its time: 72 writes of 5.7 ms "
                    "(every 10 solver steps), about 32 ms of the fit each; to write less often, "
                    "set checkpoint_seconds=0.11 (a write takes about 5% then) or more")
    assert "(checkpoint_seconds=0.02)" in writing_advice(stats, 10, every_seconds=0.02)
    default_lanes = {"writes": 25, "write_seconds": 0.12, "collective_seconds": 0.025,
                     "fit_seconds": 1.3}
    assert writing_cost(default_lanes)[1:] == pytest.approx((0.12 / 1.3, 0.025 / 1.3))
    assert writing_advice(default_lanes, 10) is None
    # Every file written alone (one process): all writing holds the fit up.
    one_process = {**default_lanes, "collective_seconds": 0.0, "write_seconds": 0.14}
    assert writing_cost(one_process)[2] == pytest.approx(0.14 / 1.3)
    assert "held up this fit for 11%" in writing_advice(one_process, 10)
    assert writing_advice({**stats, "writes": 0, "write_seconds": 0.0,
                           "collective_seconds": 0.0}, 10) is None


@pytest.mark.parametrize("share", [0.0, 1e9])
def test_a_fit_sums_up_its_checkpoints_and_warns_when_they_cost_much(tmp_path, caplog,
                                                                      monkeypatch, share):
    monkeypatch.setattr(checkpoint_module, "ADVICE_SHARE", share)
    caplog.set_level(logging.INFO, logger="nlsq_mpi")
    r = _fit(tmp_path)
    c = r.checkpoint
    assert c["fit_seconds"] > c["write_seconds"] > 0 and c["writes"] > 3
    assert c["collective_seconds"] == 0   # one process: every file in the background thread
    each, of_fit, _ = writing_cost(c)
    assert (each, of_fit) == (c["write_seconds"] / c["writes"],
                              c["write_seconds"] / c["fit_seconds"])
    line = (f"checkpoints {c['writes']} ({c['solo_writes']} by one rank alone), "
            f"{1e3 * each:.1f} ms of writing each: {100 * of_fit:.1f}% of the fit's")
    assert line in r.summary() and any(line in m for m in caplog.messages)
    warned = [rec for rec in caplog.records if "to write less often" in rec.getMessage()]
    assert [rec.levelno for rec in warned] == ([logging.WARNING] if share == 0.0 else [])
