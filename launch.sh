#!/usr/bin/env bash
# launch.sh RECIPE.yaml [--accelerate_config NAME|PATH] [--field value ...]
#
# A thin wrapper over `accelerate launch -m autoif_train.train --config RECIPE.yaml`. The accelerate config
# comes from --accelerate_config, else $ACCELERATE_CONFIG, else the recipe's `accelerate_config:` key, else
# zero3. A NAME means accelerate_configs/NAME.yaml. Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and
# MASTER_PORT on every node (NPROC_PER_NODE defaults to 8). The exact command is printed before it runs.
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
recipe="$1"; shift
[[ -f "$recipe" ]] || { echo "launch.sh: recipe not found: $recipe" >&2; exit 2; }

accel="${ACCELERATE_CONFIG:-}"
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --accelerate_config) accel="$2"; shift 2 ;;
    --accelerate_config=*) accel="${1#*=}"; shift ;;
    *) overrides+=("$1"); shift ;;
  esac
done
if [[ -z "$accel" ]]; then
  accel="$(sed -n 's/^accelerate_config:[[:space:]]*\([^#[:space:]]*\).*/\1/p' "$recipe" | head -n 1)"
fi
accel="${accel:-zero3}"
if [[ ! -f "$accel" ]]; then
  accel="$here/accelerate_configs/${accel%.yaml}.yaml"
fi
[[ -f "$accel" ]] || { echo "launch.sh: accelerate config not found: $accel" >&2; exit 2; }

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
exec "${cmd[@]}"
