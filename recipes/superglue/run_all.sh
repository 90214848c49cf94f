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
for task in ${TASKS}; do
  "${PYTHON}" "${REPO}/run.py" -m "+experiment=superglue_${task}" seed="${SEEDS}" "${PRETRAINED_ARG}" \
    hydra.sweep.dir="${ROOT}/${task}" "$@"
done
"${PYTHON}" "${HERE}/aggregate.py" "${ROOT}"
