#!/usr/bin/env bash
# Finetune + evaluate SuperGLUE tasks over several seeds (a Hydra multirun per task), then aggregate one results table.
#   bash recipes/superglue/run_all.sh PRETRAINED [SEEDS (default 1,2,3)] [extra run.py overrides...]
# PRETRAINED: an export dir / checkpoint for task.pretrained, or "none" (random init: smoke runs).
# Environment: TASKS (default: all eight, paper order), ROOT (default outputs/superglue_all), PYTHON.
# Job dirs: ROOT/<task>/<job number>/ (each with config.yaml + metrics.json); table + plot: ROOT/superglue_results.*
set -euo pipefail
PRETRAINED=${1:?usage: run_all.sh PRETRAINED|none [SEEDS] [overrides...]}
SEEDS=${2:-1,2,3}
shift $(( $# >= 2 ? 2 : 1 ))
TASKS=${TASKS:-record copa wsc rte boolq wic cb multirc}
ROOT=${ROOT:-outputs/superglue_all}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "${HERE}/../.." && pwd)
if [ "${PRETRAINED}" = "none" ]; then PRETRAINED_ARG="task.pretrained=null"; else PRETRAINED_ARG="task.pretrained=${PRETRAINED}"; fi
# one multirun per task (seeds swept inside it). Not one multirun over +experiment=a,b: Hydra composes the
# primary config without the swept experiment first, so data.* overrides would not apply there.
# A sweep with a failed job exits 1 after running the others (it lists them): go on with the next task, then
# aggregate what finished and exit non-zero. A preempted sweep (exit >= 128) stops everything at once.
failed=()
for task in ${TASKS}; do
  status=0
  "${PYTHON}" "${REPO}/run.py" -m "+experiment=superglue_${task}" seed="${SEEDS}" "${PRETRAINED_ARG}" \
    hydra.sweep.dir="${ROOT}/${task}" "$@" || status=$?
  if [ "${status}" -ge 128 ]; then exit "${status}"; fi
  if [ "${status}" -ne 0 ]; then failed+=("${task}"); fi
done
"${PYTHON}" "${HERE}/aggregate.py" "${ROOT}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "run_all.sh: jobs failed in: ${failed[*]} (listed above; FAILED files under ${ROOT})" >&2
  exit 1
fi
