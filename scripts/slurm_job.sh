#!/bin/bash
# SLURM batch script for an nlsq_mpi job that survives preemption and the time limit.
#   sbatch scripts/slurm_job.sh job.py [args...]
# SLURM sends USR1 to this batch shell 120 s before the limit (--signal=B:USR1@120); the
# trap passes it to the job step (srun forwards it to every rank); the ranks finish their
# interval, write a checkpoint and exit with status 75; the job is then requeued and the
# same command resumes from the checkpoint. SLURM_JOB_END_TIME also lets fit() stop in time.
#SBATCH --job-name=nlsq_mpi
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
set -u
JOB=${1:?usage: sbatch slurm_job.sh JOB.py [args...]}
shift
export HDF5_USE_FILE_LOCKING=FALSE      # parallel HDF5 on NFS/Lustre
PY=${NLSQ_MPI_PYTHON:-python}

# The trap is set before the step starts, so a signal in between is not lost either.
# (These lines repeat pbs_job.sh's: the scheduler runs a copy of this script from its
# spool directory, so it cannot source a file kept beside it.)
step=
trap 'stop=1 interrupted=1; [ -n "$step" ] && kill -USR1 "$step" 2>/dev/null' USR1 TERM
if [ -n "${stop:-}" ]; then   # stopped before the step started: requeue it untouched
  status=75
else
  srun "$PY" -m nlsq_mpi "$JOB" "$@" &
  step=$!
  while :; do   # a trapped signal interrupts wait (status 128+n): wait for the step's own
    interrupted=
    wait "$step"
    status=$?
    [ -z "$interrupted" ] && break
  done
fi
if [ "$status" -eq 75 ]; then
  echo "nlsq_mpi: checkpoint written, requeueing job ${SLURM_JOB_ID:-?}"
  scontrol requeue "${SLURM_JOB_ID}"
fi
exit "$status"
