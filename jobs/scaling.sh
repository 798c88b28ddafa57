#!/usr/bin/env bash
# The population-size scaling studies: one GPO job (jobs/gpo.sbatch) per
# population size m, with --ntasks=m (one rank per member), in two studies:
#
#   batch  equal per-member budget (the paper's Figure 7): total steps
#          m x GPO_STEPS_PER_MEMBER (default 1,000,000), so every member
#          samples as much whatever m is
#   total  equal total budget (Figure 10): GPO_TOTAL_STEPS (default
#          8,000,000) for every m, with each member's batch shrunk in
#          proportion to m (2048 x 8 / m steps: 8192 for m = 2, 512 for
#          m = 32), so every population takes the same gradient steps
#
#   bash jobs/scaling.sh                               # 10 jobs, Hopper-v5
#   bash jobs/scaling.sh --env Walker2d-v5 --seed 1    # arguments go to every run's gpo-mpi
#   GPO_POPULATIONS="2 4 8" GPO_STUDIES=total GPO_TOTAL_STEPS=2000000 bash jobs/scaling.sh
#   GPO_DRY_RUN=1 bash jobs/scaling.sh                 # print the sbatch commands only
#
# Settings: GPO_POPULATIONS (default "2 4 8 16 32"), GPO_STUDIES ("batch
# total"), GPO_STEPS_PER_MEMBER, GPO_TOTAL_STEPS, GPO_OUT_DIR (default
# scaling/, relative to where you submit), GPO_SBATCH_ARGS (more sbatch
# options for every job, e.g. "--time=12:00:00 --partition=long"). Run
# files: $GPO_OUT_DIR/STUDY-mM.h5; logs: gpo-scale-STUDY-mM-<job id>.out.
# Arguments after the script come after the study's own, so they override
# them. The jobs find jobs/run_gpo.sh through GPO_JOBS_DIR, set here to
# this script's directory.
set -euo pipefail

jobs_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GPO_JOBS_DIR=${GPO_JOBS_DIR:-$jobs_dir}
read -r -a populations <<< "${GPO_POPULATIONS:-2 4 8 16 32}"
read -r -a studies <<< "${GPO_STUDIES:-batch total}"
read -r -a sbatch_args <<< "${GPO_SBATCH_ARGS:-}"
per_member=${GPO_STEPS_PER_MEMBER:-1000000}
total=${GPO_TOTAL_STEPS:-8000000}
out_dir=${GPO_OUT_DIR:-scaling}

[ -n "${GPO_DRY_RUN:-}" ] || mkdir -p "$out_dir"
for study in "${studies[@]}"; do
  for m in "${populations[@]}"; do
    case "$study" in
      batch) steps=$((m * per_member)); batch=2048 ;;
      total) steps=$total; batch=$((2048 * 8 / m)) ;;
      *) echo "scaling.sh: unknown study '$study' (batch or total)" >&2; exit 2 ;;
    esac
    command=(sbatch --parsable --ntasks="$m" --job-name="gpo-scale-$study-m$m" "${sbatch_args[@]}"
             "$jobs_dir/gpo.sbatch" --population "$m" --batch-steps "$batch" --total-steps "$steps" --out "$out_dir/$study-m$m.h5" "$@")
    if [ -n "${GPO_DRY_RUN:-}" ]; then
      echo "${command[*]}"
    else
      echo "$study m=$m: job $("${command[@]}")"
    fi
  done
done
