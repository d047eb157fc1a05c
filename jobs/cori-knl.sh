#!/bin/bash
# Twinkles Run 1 at full scale on Cori KNL: 2 nodes x 64 ranks (rank 0 schedules, 127 workers),
# 4 hardware threads per rank. Submit from the twinkles-hpc checkout: sbatch jobs/cori-knl.sh.
#SBATCH --job-name=twinkles-run1
#SBATCH --qos=regular
#SBATCH --constraint=knl,quad,cache
#SBATCH --nodes=2
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --output=twinkles-%j.out
SRUN_ARGS="-n 128 -c 4 --cpu-bind=cores"
JOB_SCRIPT=jobs/cori-knl.sh
source "${SLURM_SUBMIT_DIR:-.}/jobs/cori-run.sh"
