#!/bin/bash
# One job of a scaling sweep (submitted by jobs/scaling-sweep.sh with --nodes and the variables below):
# CONFIG with [cadence] max_visits = VISITS, run by RANKS ranks of CPUS cores each, into RUNDIR; then the
# run's own trace replayed on the model (RUNDIR/scaling.json: predicted against measured wall time).
#SBATCH --qos=regular
#SBATCH --signal=B:USR1@120
set -u
cd "${SLURM_SUBMIT_DIR:-.}"
module load python
source "${TWINKLES_ENV:-$HOME/twinkles-env}/bin/activate"   # mpi4py built against Cray MPICH (docs/cori.md)
export HDF5_USE_FILE_LOCKING=FALSE OMP_NUM_THREADS=1

mkdir -p "$RUNDIR"
config="$RUNDIR.toml"
# the campaign's config with this job's number of visits; relative paths resolve against CONFIG's folder
python - "$CONFIG" "$config" "$VISITS" <<'PY'
import os, sys, tomllib
src, dst, visits = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(src, "rb") as fh:
    cfg = tomllib.load(fh)
cad = cfg.setdefault("cadence", {})
cad["max_visits"] = visits
if cad.get("source", "synthetic") != "synthetic" and not os.path.isabs(cad["source"]):
    cad["source"] = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(src)), cad["source"]))
def value(v):
    return ("true" if v else "false") if isinstance(v, bool) else repr(v) if isinstance(v, str) else str(v)
with open(dst, "w") as fh:
    for name, section in cfg.items():
        fh.write(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in section.items()) + "\n")
PY

start=$(date +%s)
srun -n "$RANKS" -c "$CPUS" --cpu-bind=cores twinkles-hpc run "$config" -o "$RUNDIR" &
SRUN=$!
trap 'kill -USR1 $SRUN' USR1 TERM
wait $SRUN; rc=$?
while kill -0 $SRUN 2>/dev/null; do wait $SRUN; rc=$?; done
echo "ranks $RANKS visits $VISITS: exit $rc after $(( $(date +%s) - start )) s"
twinkles-hpc scaling "$RUNDIR" --json > "$RUNDIR/scaling.json" && twinkles-hpc scaling "$RUNDIR"
exit "$rc"
