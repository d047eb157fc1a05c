#!/bin/bash
# Body shared by the Perlmutter batch scripts (sourced by jobs/perlmutter-cpu.sh, which sets SRUN_ARGS and
# the #SBATCH options). Slurm warns the batch shell 120 s before the time limit (--signal=B:USR1@120); the
# trap forwards the signal to srun, every rank checkpoints, and the run exits 75: the calling script is then
# resubmitted, and the next job resumes mid-visit. With --signal=USR1@120 (no B:) Slurm signals every rank
# itself and the trap has nothing to do; the exit code and the resubmission are the same.
#
# TWINKLES_RUNNER says where each rank's Python comes from (docs/perlmutter.md):
#   venv        (default) the environment $TWINKLES_ENV, mpi4py built against Cray MPICH;
#   podman-hpc  the image $TWINKLES_IMAGE (podman-hpc build + migrate), Cray MPICH mounted by --mpi;
#   shifter     the job's Shifter image (sbatch --image=...), Cray MPICH mounted by --module=mpich.
set -u
CONFIG=${CONFIG:-jobs/run1.toml}
RUNDIR=${RUNDIR:-$SCRATCH/twinkles/run1}
MAX_RESUBMITS=${MAX_RESUBMITS:-20}
cd "${SLURM_SUBMIT_DIR:-.}"
export HDF5_USE_FILE_LOCKING=FALSE OMP_NUM_THREADS=1

case "${TWINKLES_RUNNER:-venv}" in
  venv)
    module load python
    source "${TWINKLES_ENV:-$HOME/twinkles-env}/bin/activate"   # docs/perlmutter.md: install it on /global/common/software
    TWINKLES=(twinkles-hpc) ;;
  podman-hpc)
    TWINKLES=(podman-hpc run --rm --mpi -v "$SCRATCH:$SCRATCH" -v "$PWD:$PWD" -w "$PWD"
              "${TWINKLES_IMAGE:-twinkles-hpc:0.1}" twinkles-hpc) ;;
  shifter)
    TWINKLES=(shifter --module=mpich twinkles-hpc) ;;
  *)
    echo "TWINKLES_RUNNER must be venv, podman-hpc or shifter, not ${TWINKLES_RUNNER}" >&2
    exit 2 ;;
esac

# RUN_ARGS="--defer ingest": the processing only; once it is complete, a job of DEFERRED_NODES nodes (default
# 1) runs the same command with 2 ranks and without RUN_ARGS, which does the deferred stages (the ingest
# has one writer; docs/perlmutter.md)
srun $SRUN_ARGS "${TWINKLES[@]}" run "$CONFIG" -o "$RUNDIR" ${RUN_ARGS:-} &
SRUN=$!
trap 'kill -USR1 $SRUN' USR1 TERM
wait $SRUN; rc=$?
while kill -0 $SRUN 2>/dev/null; do wait $SRUN; rc=$?; done   # `wait` returns early on a trapped signal

if [ "$rc" -eq 75 ] && [ "${RESUBMIT_COUNT:-0}" -lt "$MAX_RESUBMITS" ]; then
  echo "checkpointed: resubmitting ($(( ${RESUBMIT_COUNT:-0} + 1 ))/$MAX_RESUBMITS)"
  RESUBMIT_COUNT=$(( ${RESUBMIT_COUNT:-0} + 1 )) sbatch --export=ALL,RESUBMIT_COUNT "$JOB_SCRIPT"
fi
if [ "$rc" -eq 0 ] && [[ "${RUN_ARGS:-}" == *--defer* ]]; then
  echo "processing complete: submitting the deferred stages on ${DEFERRED_NODES:-1} node(s)"
  sbatch -N "${DEFERRED_NODES:-1}" --export=ALL,RUN_ARGS=,RESUBMIT_COUNT=0,RANKS=2 "$JOB_SCRIPT"
fi
"${TWINKLES[@]}" status "$RUNDIR"
exit "$rc"
