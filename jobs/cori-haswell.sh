#!/bin/bash
# Twinkles Run 1 at full scale on Cori Haswell: 2 nodes x 32 ranks (rank 0 schedules, 63 workers).
# Submit from the twinkles-hpc checkout: sbatch jobs/cori-haswell.sh (see docs/cori.md).
#SBATCH --job-name=twinkles-run1
#SBATCH --qos=regular
#SBATCH --constraint=haswell
#SBATCH --nodes=2
#SBATCH --time=02:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --output=twinkles-%j.out
SRUN_ARGS="-n 64 -c 2 --cpu-bind=cores"
JOB_SCRIPT=jobs/cori-haswell.sh
source "${SLURM_SUBMIT_DIR:-.}/jobs/cori-run.sh"
