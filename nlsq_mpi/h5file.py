"""Writing one HDF5 file of datasets and attributes through h5py's low-level API.

Every property list and HDF5 type is built once and reused, and rows are written in the
file's own type (no conversion), so a file costs what HDF5 does rather than h5py's Python
layers: back to back on the 2-core test machine, a 1,000-start checkpoint generation on 2
ranks took about 2.0 ms through ``h5py.File``, ``create_dataset`` and ``attrs``, and about
1.1 ms this way (scripts/bench_h5_floor.py measures these calls).
The files are ordinary HDF5: strings are h5py's variable-length UTF-8 strings, numbers and
records read back with plain h5py or h5dump.
"""
import os
from functools import lru_cache

import numpy as np


class FileWriter:
    """Writes whole files of named datasets; collectively (each rank its own rows) when
    built with an MPI communicator and h5py has MPI support, else from one process."""

    def __init__(self, h5py, mpi_comm=None):
        self.h5py = h5py
        h5p, h5d, h5s = h5py.h5p, h5py.h5d, h5py.h5s
        self._file_access = h5p.create(h5p.FILE_ACCESS)
        if mpi_comm is not None:
            from mpi4py import MPI
            self._file_access.set_fapl_mpio(mpi_comm, MPI.INFO_NULL)
        elif hasattr(self._file_access, "set_file_locking"):   # HDF5 1.10.7 on
            # Each file has a name of its own: no lock (which some parallel file systems lack).
            self._file_access.set_file_locking(False, True)
        self._file_create = h5p.create(h5p.FILE_CREATE)
        self._file_create.set_obj_track_times(False)
        self._dataset_create = h5p.create(h5p.DATASET_CREATE)
        self._dataset_create.set_obj_track_times(False)
        # Every row of every dataset is written, so HDF5 need not fill them first.
        self._dataset_create.set_fill_time(h5d.FILL_TIME_NEVER)
        self._string_dtype = h5py.string_dtype()
        self._scalar = h5s.create(h5s.SCALAR)
        self._types = {}

    def _type(self, dtype):
        if dtype not in self._types:
            self._types[dtype] = self.h5py.h5t.py_create(dtype, logical=True)
        return self._types[dtype]

    def write(self, path, attrs, datasets, sync=False, pause=None):
        """Create the new file ``path`` (an error if it exists: truncating an MPI file at open
        costs a collective) with ``attrs`` (name -> int, float or str) and
        ``datasets`` (name -> (dtype, shape, parts)), where ``parts`` lists the
        ``(rows, first_row)`` blocks this process writes. In collective mode every rank makes
        the same call with the same attrs, names, dtypes and shapes (HDF5 metadata is
        collective); the parts are each rank's own. With ``sync`` every process syncs what
        it wrote to storage before the file closes (H5Fflush, which is MPI_File_sync under
        mpio): for ranks on several nodes, whose writes one node's fsync does not cover.
        ``pause`` (no arguments) is called after each HDF5 object, and after the file is made
        and closed: for a thread that must leave its core to another often (it yields
        there; none of these steps took over 0.4 ms on the test machine); what it raises
        abandons the file, closed (checkpoint._Job.courteous)."""
        pause = pause or no_pause
        h5f, h5d, h5s, h5a = self.h5py.h5f, self.h5py.h5d, self.h5py.h5s, self.h5py.h5a
        fid = h5f.create(os.fsencode(path), h5f.ACC_EXCL, fcpl=self._file_create,
                         fapl=self._file_access)
        pause()
        try:
            for name, value in attrs.items():
                value = np.array(value, self._string_dtype if isinstance(value, str) else None)
                attr = h5a.create(fid, name.encode(), self._type(value.dtype), self._scalar)
                try:
                    attr.write(value)
                finally:   # an object left open would keep the file from closing
                    attr.close()
                pause()
            for name, (dtype, shape, parts) in datasets.items():
                file_type, file_space = self._type(np.dtype(dtype)), h5s.create_simple(shape)
                dset = h5d.create(fid, name.encode(), file_type, file_space,
                                  dcpl=self._dataset_create)
                try:
                    for rows, first in parts:
                        self._write_rows(dset, file_type, file_space, rows, first, dtype)
                finally:
                    dset.close()
                pause()
            if sync:
                h5f.flush(fid, h5f.SCOPE_GLOBAL)
        finally:
            fid.close()
        pause()

    def _write_rows(self, dset, file_type, file_space, rows, first, dtype):
        """rows into dset from row ``first`` on (independent I/O in collective mode)."""
        h5s = self.h5py.h5s
        rows = np.ascontiguousarray(rows, dtype)
        if not rows.size:
            return
        if rows.shape == file_space.shape:
            dset.write(h5s.ALL, h5s.ALL, rows, mtype=file_type)
        else:
            file_space.select_hyperslab((first,) + (0,) * (rows.ndim - 1), rows.shape)
            dset.write(h5s.create_simple(rows.shape), file_space, rows, mtype=file_type)


def no_pause():
    """FileWriter.write's default ``pause``: go straight on."""


@lru_cache(maxsize=4)
def file_writer(h5py, comm=None):
    """The process's FileWriter for one process (``comm`` None) or collective over ``comm``
    (nlsq_mpi's MPIComm), made once: the collective one duplicates the communicator, a
    collective that cost 0.5-0.7 ms a fit on the test machine."""
    return FileWriter(h5py, comm.comm if comm is not None else None)
