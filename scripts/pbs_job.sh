#!/bin/bash
# PBS Pro / Torque script for an nlsq_mpi job that survives preemption and the walltime.
#   qsub -v JOB=job.py scripts/pbs_job.sh
# fit() stops NLSQ_MPI_WALLTIME seconds after it starts (here: the walltime less 5 minutes,
# or less a tenth of a walltime under 50 minutes), writes a checkpoint and exits with status
# 75; the script then resubmits itself and the same command resumes from the checkpoint.
# A SIGTERM or SIGUSR1 to this shell (PBS's preemption, qsig) is passed on to mpiexec as
# SIGUSR1, which mpiexec forwards to every rank and waits for: they finish the interval,
# write a checkpoint and exit with 75 as well.
#PBS -N nlsq_mpi
#PBS -l select=1:ncpus=4:mpiprocs=4:ngpus=4
#PBS -l walltime=24:00:00
#PBS -r y
set -u
cd "${PBS_O_WORKDIR:-.}"
JOB=${JOB:-job.py}
export HDF5_USE_FILE_LOCKING=FALSE
limit=${PBS_WALLTIME:-86400}
margin=$(( limit / 10 < 300 ? limit / 10 : 300 ))
export NLSQ_MPI_WALLTIME=${NLSQ_MPI_WALLTIME:-$(( limit - margin ))}
NP=$(wc -l < "${PBS_NODEFILE:?not inside a PBS job}")
PY=${NLSQ_MPI_PYTHON:-python}

# The trap is set before the step starts, so a signal in between is not lost either.
# (These lines repeat slurm_job.sh's: the scheduler runs a copy of this script from its
# spool directory, so it cannot source a file kept beside it.)
step=
trap 'stop=1 interrupted=1; [ -n "$step" ] && kill -USR1 "$step" 2>/dev/null' USR1 TERM
if [ -n "${stop:-}" ]; then   # stopped before the step started: requeue it untouched
  status=75
else
  mpiexec -n "$NP" "$PY" -m nlsq_mpi "$JOB" &
  step=$!
  while :; do   # a trapped signal interrupts wait (status 128+n): wait for the step's own
    interrupted=
    wait "$step"
    status=$?
    [ -z "$interrupted" ] && break
  done
fi
if [ "$status" -eq 75 ]; then
  echo "nlsq_mpi: checkpoint written, resubmitting"
  qsub -v JOB="$JOB" "$0"
fi
exit "$status"
