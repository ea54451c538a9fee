#!/usr/bin/env bash
# launch.sh RECIPE.yaml [--accelerate_config NAME|PATH] [--dry-run] [--field value ...]
#
# A thin wrapper over `accelerate launch -m autoif_train.train --config RECIPE.yaml`. The accelerate config
# comes from --accelerate_config, else $ACCELERATE_CONFIG, else the recipe's `accelerate_config:` key, else
# zero3. A NAME means accelerate_configs/NAME.yaml. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and
# MASTER_PORT on every node (NPROC_PER_NODE defaults to 8). The exact command is printed before it runs
# (--dry-run prints it and stops). Flags may come before or after the recipe.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() { sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; }
fail() { echo "launch.sh: $*" >&2; exit 2; }
configs() { (cd "$here/accelerate_configs" && ls ./*.yaml 2>/dev/null | sed 's|^\./||; s|\.yaml$||' | paste -sd ' '); }

recipe=""
accel="${ACCELERATE_CONFIG:-}"
dry_run=0
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    --accelerate_config|--accelerate-config)
      [[ $# -ge 2 && "$2" != --* ]] || fail "$1 needs a value: a name ($(configs)) or a path"
      accel="$2"; shift 2 ;;
    --accelerate_config=*|--accelerate-config=*) accel="${1#*=}"; shift ;;
    --config) [[ $# -ge 2 ]] || fail "--config needs a recipe file"; recipe="$2"; shift 2 ;;
    --config=*) recipe="${1#*=}"; shift ;;
    *.yaml|*.yml)
      if [[ -z "$recipe" && ( ${#overrides[@]} -eq 0 || "${overrides[-1]}" != --* || "${overrides[-1]}" == *=* ) ]]; then
        recipe="$1"
      else
        overrides+=("$1")
      fi
      shift ;;
    *) overrides+=("$1"); shift ;;
  esac
done
[[ -n "$recipe" ]] || { usage >&2; fail "give a recipe: launch.sh RECIPE.yaml [--field value ...]"; }
[[ -f "$recipe" ]] || fail "recipe not found: $recipe"

if [[ -z "$accel" ]]; then
  accel="$(sed -n 's/^accelerate_config:[[:space:]]*\([^#[:space:]]*\).*/\1/p' "$recipe" | head -n 1)"
fi
accel="${accel:-zero3}"
if [[ ! -f "$accel" ]]; then
  [[ -f "$here/accelerate_configs/${accel%.yaml}.yaml" ]] \
    || fail "accelerate config not found: $accel (names: $(configs); or give a path)"
  accel="$here/accelerate_configs/${accel%.yaml}.yaml"
fi

# DeepSpeed on CPU compiles its shm_comm op at the first launch (2-3 minutes, no output). A build that was
# interrupted leaves a lock behind, and every later launch then waits on it forever.
if grep -q 'distributed_type:[[:space:]]*DEEPSPEED' "$accel" && ! command -v nvidia-smi >/dev/null 2>&1; then
  ext="${TORCH_EXTENSIONS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/torch_extensions}"
  lock="$(ls -d "$ext"/*/deepspeed_shm_comm/lock 2>/dev/null | head -n 1 || true)"
  if [[ -n "$lock" ]]; then
    age=$(( $(date +%s) - $(stat -c %Y "$lock") ))
    if (( age > ${SHM_LOCK_STALE_SECONDS:-600} )); then
      fail "stale DeepSpeed build lock $lock (${age}s old, from an interrupted build): every launch would wait" \
           "on it forever. If no other launch is running, remove it (rm -f '$lock') and launch again."
    fi
    echo "launch.sh: note: DeepSpeed's shm_comm op is being built by another launch (lock $lock); waiting for it" >&2
  elif ! ls "$ext"/*/deepspeed_shm_comm/deepspeed_shm_comm.so >/dev/null 2>&1; then
    echo "launch.sh: note: DeepSpeed compiles its shm_comm op on this first CPU launch (2-3 minutes without" \
         "output); \`make deepspeed-ops\` builds it ahead of time" >&2
  fi
fi

cmd=(accelerate launch --config_file "$accel")
if [[ -n "${NNODES:-}" ]]; then
  nproc="${NPROC_PER_NODE:-8}"
  cmd+=(--num_machines "$NNODES" --num_processes "$((NNODES * nproc))"
        --machine_rank "${NODE_RANK:-0}" --main_process_ip "${MASTER_ADDR:?set MASTER_ADDR}"
        --main_process_port "${MASTER_PORT:-29500}")
fi
cmd+=(-m autoif_train.train --config "$recipe")
cmd+=("${overrides[@]+"${overrides[@]}"}")

printf '+'; printf ' %q' "${cmd[@]}"; printf '\n'
(( dry_run )) && exit 0
exec "${cmd[@]}"
