#!/bin/bash
# Real strong or weak scaling sweeps: one batch job per node count, each running jobs/scaling.toml
# (the demo's whole chain on the full sensor) with `srun` over every core of its nodes, then replaying its
# own trace (`twinkles-hpc scaling RUNDIR --json`). Compare the jobs' wall times with the model's
# predictions (docs/scaling.md). Run it on a login node from the twinkles-hpc checkout:
#
#   MACHINE=perlmutter MODE=strong NODES="1 2 4 8 16 32" VISITS=1227 jobs/scaling-sweep.sh
#   MACHINE=perlmutter MODE=weak NODES="1 2 4 8" VISITS_PER_RANK=1 jobs/scaling-sweep.sh
#   MACHINE=haswell MODE=strong NODES="1 2 4 8 16 32 64" jobs/scaling-sweep.sh
#   MACHINE=knl MODE=strong NODES="1 2 4 8 16 32" jobs/scaling-sweep.sh
#
# MACHINE: perlmutter (CPU nodes, 128 ranks a node), haswell (Cori, 32), knl (Cori, 64 of the 68 cores).
# MODE strong: VISITS visits at every node count (default 1227, the Run 1 list); weak: VISITS_PER_RANK x
# ranks visits (more than 1227 needs an OpSim database with more visits: CONFIG's [cadence] source).
# Each job writes $SWEEP_DIR/<mode>-<nodes>n/ (the run directory) and its scaling.json.
set -eu
MACHINE=${MACHINE:-perlmutter}
MODE=${MODE:-strong}
NODES=${NODES:-"1 2 4 8 16 32"}
VISITS=${VISITS:-1227}
VISITS_PER_RANK=${VISITS_PER_RANK:-1}
CONFIG=${CONFIG:-jobs/scaling.toml}
SWEEP_DIR=${SWEEP_DIR:-$SCRATCH/twinkles/scaling-$MACHINE}
TIME=${TIME:-02:00:00}

case "$MACHINE" in
  perlmutter) PER_NODE=128; CPUS=2; SBATCH_ARGS="--constraint=cpu" ;;
  haswell)    PER_NODE=32;  CPUS=2; SBATCH_ARGS="--constraint=haswell" ;;
  knl)        PER_NODE=64;  CPUS=4; SBATCH_ARGS="--constraint=knl,quad,cache" ;;
  *) echo "MACHINE must be perlmutter, haswell or knl, not $MACHINE" >&2; exit 2 ;;
esac
case "$MODE" in
  strong|weak) ;;
  *) echo "MODE must be strong or weak, not $MODE" >&2; exit 2 ;;
esac
mkdir -p "$SWEEP_DIR"
for n in $NODES; do
  ranks=$(( n * PER_NODE ))
  if [ "$MODE" = weak ]; then visits=$(( VISITS_PER_RANK * ranks )); else visits=$VISITS; fi
  rundir="$SWEEP_DIR/$MODE-${n}n"
  sbatch $SBATCH_ARGS --nodes="$n" --time="$TIME" --job-name="twinkles-$MODE-${n}n" \
    --output="$SWEEP_DIR/$MODE-${n}n-%j.out" \
    --export=ALL,CONFIG="$CONFIG",RUNDIR="$rundir",RANKS="$ranks",CPUS="$CPUS",VISITS="$visits" \
    jobs/scaling-run.sh
  echo "submitted $MODE $n node(s): $ranks ranks, $visits visits -> $rundir"
done
