#!/bin/bash
# Twinkles Run 1 at full scale on Perlmutter CPU nodes (2 x AMD EPYC 7763, 128 cores, 512 GB each):
# 2 nodes x 128 ranks (rank 0 schedules, 255 workers), one core (two hardware threads) per rank.
# Submit from the twinkles-hpc checkout, with your project: sbatch -A mNNNN jobs/perlmutter-cpu.sh
# (docs/perlmutter.md; TWINKLES_RUNNER=podman-hpc or shifter runs it from the container image instead).
#SBATCH --job-name=twinkles-run1
#SBATCH --qos=regular
#SBATCH --constraint=cpu
#SBATCH --nodes=2
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --output=twinkles-%j.out
# 128 ranks a node (sbatch -N sets the nodes); RANKS overrides (the deferred ingest job runs with RANKS=2).
# CORES_PER_RANK=N (default 1) gives each rank N cores and runs `twinkles-hpc run --threads N`: set RANKS to
# nodes x 128 / N (docs/perlmutter.md, "Threads inside a rank").
CORES=${CORES_PER_RANK:-1}
SRUN_ARGS="-n ${RANKS:-$(( ${SLURM_NNODES:-2} * 128 / CORES ))} -c $(( 2 * CORES )) --cpu-bind=cores"
if [ "$CORES" -gt 1 ]; then RUN_ARGS="${RUN_ARGS:-} --threads $CORES"; fi
JOB_SCRIPT=jobs/perlmutter-cpu.sh
source "${SLURM_SUBMIT_DIR:-.}/jobs/perlmutter-run.sh"
