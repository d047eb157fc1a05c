#!/bin/bash
# Twinkles Run 1 at full scale on Cori KNL: 2 nodes x 64 ranks (rank 0 schedules, 127 workers), 4 hardware threads per rank.
# Slurm warns the batch shell 120 s before the time limit (--signal=B:USR1@120); the trap forwards
# the signal to srun, every rank checkpoints, and the job exits 75: this script then resubmits itself.
#SBATCH --job-name=twinkles-run1
#SBATCH --qos=regular
#SBATCH --constraint=knl,quad,cache
#SBATCH --nodes=2
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --output=twinkles-%j.out
set -u
CONFIG=${CONFIG:-jobs/run1.toml}
RUNDIR=${RUNDIR:-$SCRATCH/twinkles/run1}
MAX_RESUBMITS=${MAX_RESUBMITS:-20}

module load python
source "${TWINKLES_ENV:-$HOME/twinkles-env}/bin/activate"   # mpi4py built against Cray MPICH (docs/cori.md)
export HDF5_USE_FILE_LOCKING=FALSE OMP_NUM_THREADS=1

srun -n 128 -c 4 --cpu-bind=cores twinkles-hpc run "$CONFIG" -o "$RUNDIR" &
SRUN=$!
trap 'kill -USR1 $SRUN' USR1 TERM
wait $SRUN; rc=$?
while kill -0 $SRUN 2>/dev/null; do wait $SRUN; rc=$?; done   # `wait` returns early on a trapped signal

if [ "$rc" -eq 75 ] && [ "${RESUBMIT_COUNT:-0}" -lt "$MAX_RESUBMITS" ]; then
  echo "checkpointed: resubmitting ($(( ${RESUBMIT_COUNT:-0} + 1 ))/$MAX_RESUBMITS)"
  RESUBMIT_COUNT=$(( ${RESUBMIT_COUNT:-0} + 1 )) sbatch --export=ALL,RESUBMIT_COUNT "$0"
fi
twinkles-hpc status "$RUNDIR"
exit "$rc"
