#!/bin/bash
# Body shared by the Cori batch scripts (sourced by jobs/cori-haswell.sh and jobs/cori-knl.sh, which
# set SRUN_ARGS and their #SBATCH options). Slurm warns the batch shell 120 s before the time limit
# (--signal=B:USR1@120); the trap forwards the signal to srun, every rank checkpoints, and the job
# exits 75: the calling script is then resubmitted, and the next job resumes mid-visit.
set -u
CONFIG=${CONFIG:-jobs/run1.toml}
RUNDIR=${RUNDIR:-$SCRATCH/twinkles/run1}
MAX_RESUBMITS=${MAX_RESUBMITS:-20}
cd "${SLURM_SUBMIT_DIR:-.}"

module load python
source "${TWINKLES_ENV:-$HOME/twinkles-env}/bin/activate"   # mpi4py built against Cray MPICH (docs/cori.md)
export HDF5_USE_FILE_LOCKING=FALSE OMP_NUM_THREADS=1

srun $SRUN_ARGS twinkles-hpc run "$CONFIG" -o "$RUNDIR" &
SRUN=$!
trap 'kill -USR1 $SRUN' USR1 TERM
wait $SRUN; rc=$?
while kill -0 $SRUN 2>/dev/null; do wait $SRUN; rc=$?; done   # `wait` returns early on a trapped signal

if [ "$rc" -eq 75 ] && [ "${RESUBMIT_COUNT:-0}" -lt "$MAX_RESUBMITS" ]; then
  echo "checkpointed: resubmitting ($(( ${RESUBMIT_COUNT:-0} + 1 ))/$MAX_RESUBMITS)"
  RESUBMIT_COUNT=$(( ${RESUBMIT_COUNT:-0} + 1 )) sbatch --export=ALL,RESUBMIT_COUNT "$JOB_SCRIPT"
fi
twinkles-hpc status "$RUNDIR"
exit "$rc"
