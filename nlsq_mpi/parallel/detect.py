"""Cluster and launcher detection: what the scheduler and the MPI launcher tell each rank."""
import os
from dataclasses import dataclass, fields


def _int(environ, *names):
    for n in names:
        v = environ.get(n)
        if v not in (None, ""):
            try:
                return int(v.split("(")[0].split(",")[0])
            except ValueError:
                continue
    return None


@dataclass
class ClusterInfo:
    scheduler: str          # "slurm", "pbs" or "none"
    launcher: str           # "openmpi", "mpich", "slurm", or "none"
    job_id: str | None
    rank: int
    size: int
    local_rank: int
    local_size: int
    nodes: int | None
    job_end_time: float | None   # epoch seconds (SLURM_JOB_END_TIME)
    gpus_visible: int
    gpu: int | None              # the local GPU index this rank uses

    def __str__(self):
        width = max(len(f.name) for f in fields(self))
        return "\n".join(f"{f.name:<{width}}  {getattr(self, f.name)}" for f in fields(self))


def from_environment(environ=os.environ):
    """What the environment alone says (before MPI is initialised)."""
    if "SLURM_JOB_ID" in environ:
        scheduler, job_id = "slurm", environ["SLURM_JOB_ID"]
        nodes = _int(environ, "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
    elif "PBS_JOBID" in environ:
        scheduler, job_id = "pbs", environ["PBS_JOBID"]
        nodes = None
        nodefile = environ.get("PBS_NODEFILE")
        if nodefile and os.path.exists(nodefile):
            with open(nodefile) as fh:
                nodes = len({ln.strip() for ln in fh if ln.strip()})
    else:
        scheduler, job_id, nodes = "none", None, None

    if "OMPI_COMM_WORLD_SIZE" in environ:
        launcher = "openmpi"
        rank, size = _int(environ, "OMPI_COMM_WORLD_RANK"), _int(environ, "OMPI_COMM_WORLD_SIZE")
        local_rank = _int(environ, "OMPI_COMM_WORLD_LOCAL_RANK")
        local_size = _int(environ, "OMPI_COMM_WORLD_LOCAL_SIZE")
    elif "PMI_RANK" in environ or "PMI_SIZE" in environ:
        launcher = "mpich"
        rank, size = _int(environ, "PMI_RANK"), _int(environ, "PMI_SIZE")
        local_rank = _int(environ, "MPI_LOCALRANKID", "PMI_LOCAL_RANK")
        local_size = _int(environ, "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE")
    elif "SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ:
        launcher = "slurm"
        rank, size = _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS")
        local_rank = _int(environ, "SLURM_LOCALID")
        local_size = _int(environ, "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE")
    else:
        launcher, rank, size, local_rank, local_size = "none", 0, 1, 0, 1
    if scheduler == "slurm" and local_rank is None:
        local_rank = _int(environ, "SLURM_LOCALID")

    rank = rank or 0
    size = size or 1
    local_rank = local_rank if local_rank is not None else 0
    local_size = local_size or 1
    end = _int(environ, "SLURM_JOB_END_TIME")
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    gpus = len([d for d in visible.split(",") if d.strip()]) if visible else 0
    return ClusterInfo(scheduler, launcher, job_id, rank, size, local_rank, local_size, nodes,
                       float(end) if end else None, gpus, None)


def detect(comm=None, environ=os.environ):
    """ClusterInfo with rank, size and node-local layout taken from the communicator (the
    ground truth) where there is one, and GPUs counted by JAX."""
    info = from_environment(environ)
    if comm is not None:
        info.rank, info.size = comm.rank, comm.size
        info.local_rank, info.local_size = comm.local_split()
    import jax
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    info.gpus_visible = len(gpus)
    info.gpu = gpus[0].id if gpus else None
    return info
