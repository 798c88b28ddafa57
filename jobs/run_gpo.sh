# shellcheck shell=bash
# Shared by the batch scripts in jobs/: sourced, not run. It defines
#
#   run_gpo [gpo-mpi options...]
#
# which starts gpo-mpi with the launcher (srun, or $GPO_LAUNCHER) in the
# background, passes the signals the batch shell gets on to it, waits for it
# through any number of signals, requeues the job (`scontrol requeue`) when
# gpo-mpi stopped after a checkpoint (exit code 3) for any reason but a
# cancellation, and returns gpo-mpi's exit code. A requeued job runs the same
# command again with SLURM_RESTART_COUNT > 0, and gpo-mpi then resumes from
# the checkpoint in its --out file by itself. Unless the options say
# --resume or --overwrite, run_gpo adds --resume-if-exists: a job submitted
# again after it stopped (or ran out of time) continues its run file instead
# of failing on it, and one whose run is complete ends at once with exit 2.
#
# The signals: SLURM's `--signal=B:USR1@300` (in every script here) sends
# SIGUSR1 to this batch shell only, 300 to 330 s before the time limit
# (slurmctld looks every 30 s, and sends it at the first look that finds less
# than 300 + 30 s left). So --time must be well above 330 s (a signal
# during gpo-mpi's start-up stops the run after its first iteration). Bash cannot run a trap
# while a foreground command runs, hence the launcher in the background and
# `wait`, which a trapped signal interrupts; the trap passes the signal on
# with `kill` to the launcher, which forwards it to the ranks: srun forwards
# the signals it gets to all tasks of its step, and MPICH's mpiexec (hydra)
# forwards SIGUSR1 to the ranks. Then `wait` is called again until the
# launcher really ended. Every rank of gpo-mpi takes SIGUSR1 and SIGTERM as
# "stop at the next iteration": the ranks write a checkpoint and exit with 3.
# Then the job requeues itself, unless the batch shell got SIGTERM or SIGINT:
# that is scancel (or the time limit itself, or a preemption), and a job
# requeued then would come back although it was cancelled. A SIGUSR1 sent to
# the ranks directly (--signal=USR1@300 without B:, with srun) stops them
# too, and the job requeues itself as well.
#
# Settings (environment variables; sbatch passes the submitting shell's
# environment on to the job):
#   GPO_LAUNCHER  the launcher command, word-split, evaluated in the job so
#                 that it may name $SLURM_NTASKS. Default:
#                   srun --mpi=pmi2 --cpus-per-task=1
#                 For a site whose mpi4py is built against an MPI that srun
#                 cannot start (no PMI2 support), or with the PyPI mpich
#                 wheel and a SLURM without mpi/pmi2:
#                   export GPO_LAUNCHER='mpiexec -n $SLURM_NTASKS'
#   GPO_MPI       the gpo-mpi command (default: gpo-mpi from PATH)
#   GPO_VENV      a virtual environment to activate first (default: none;
#                 $SLURM_SUBMIT_DIR/.venv when gpo-mpi is not on PATH)
#   GPO_REQUEUE   0: exit with 3 after a stop instead of requeueing

gpo_log() { echo "[jobs $(date '+%F %T')] $*"; }

# Activate the environment that has gpo-mpi (see GPO_VENV above).
if [ -n "${GPO_VENV:-}" ]; then
  # shellcheck disable=SC1091
  . "$GPO_VENV/bin/activate"
elif ! command -v "${GPO_MPI:-gpo-mpi}" >/dev/null 2>&1 && [ -f "${SLURM_SUBMIT_DIR:-.}/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "${SLURM_SUBMIT_DIR:-.}/.venv/bin/activate"
fi

_gpo_step=""          # pid of the launcher
_gpo_signalled=""     # set by the trap: the last signal passed on
_gpo_ended=""         # set on SIGTERM or SIGINT: the job is being cancelled or ended, do not requeue

_gpo_forward() {  # the trap: pass signal $1 on to the launcher
  _gpo_signalled=$1
  case "$1" in TERM|INT) _gpo_ended=$1 ;; esac
  if [ -n "$_gpo_step" ]; then
    gpo_log "got SIG$1, passing it on to the ranks (they checkpoint at the next iteration and stop)"
    # srun takes a single SIGINT as "print the tasks' state": send TERM for INT
    kill -s "${1/INT/TERM}" "$_gpo_step" 2>/dev/null || true
  else
    gpo_log "got SIG$1 while gpo-mpi is not running: ignored"
  fi
}
# From here on: bash's default for SIGUSR1 would end the batch shell, and the job with it.
trap '_gpo_forward USR1' USR1
trap '_gpo_forward TERM' TERM
trap '_gpo_forward INT' INT

run_gpo() {
  local launcher code option chosen=""
  for option in "$@"; do
    case "$option" in --resume|--overwrite|--resume-if-exists) chosen=1 ;; esac
  done
  [ -n "$chosen" ] || set -- "$@" --resume-if-exists
  if [ -n "${GPO_LAUNCHER:-}" ]; then
    eval "launcher=($GPO_LAUNCHER)"
  else
    launcher=(srun --mpi=pmi2 --cpus-per-task=1)
  fi
  gpo_log "job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array task $SLURM_ARRAY_TASK_ID)}," \
          "restart ${SLURM_RESTART_COUNT:-0}, ${SLURM_NTASKS:-?} task(s) on ${SLURM_JOB_NODELIST:-?}:" \
          "${launcher[*]} ${GPO_MPI:-gpo-mpi} $*"
  "${launcher[@]}" "${GPO_MPI:-gpo-mpi}" "$@" &
  _gpo_step=$!
  # `wait` returns 128 + the signal's number when a trapped signal interrupts
  # it, with the launcher still running: wait again. Waiting for a process
  # that has already ended returns its exit code, so a signal that comes
  # just as the launcher ends does no harm either.
  while :; do
    _gpo_signalled=""
    wait "$_gpo_step"
    code=$?
    if [ -n "$_gpo_signalled" ] && [ "$code" -gt 128 ]; then
      continue
    fi
    break
  done
  _gpo_step=""
  gpo_log "gpo-mpi exited with code $code"
  local state=""
  if [ "$code" -eq 3 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    state=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1)
  fi
  if [ "$code" -eq 3 ] && { [ -n "$_gpo_ended" ] || [ "${state:-JobState=RUNNING}" != JobState=RUNNING ]; }; then
    # scancel, the time limit itself or a preemption: SLURM sends SIGTERM, and the job is no
    # longer RUNNING. `scontrol requeue` would bring even a cancelled job back: leave it ended.
    gpo_log "stopped${_gpo_ended:+ by SIG$_gpo_ended} after a checkpoint (${state:-JobState=?}): not" \
            "requeued; to continue, submit the same command with --resume"
  elif [ "$code" -eq 3 ] && [ "${GPO_REQUEUE:-1}" != 0 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    gpo_log "stopped after a checkpoint: requeueing job $SLURM_JOB_ID (it resumes when it starts again)"
    if ! scontrol requeue "$SLURM_JOB_ID"; then
      gpo_log "scontrol requeue failed: to continue, submit the same command with --resume"
    fi
  fi
  return "$code"
}
