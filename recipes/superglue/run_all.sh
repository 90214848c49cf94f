#!/usr/bin/env bash
# Finetune + evaluate all eight SuperGLUE tasks over several seeds, then aggregate one results table.
#   bash recipes/superglue/run_all.sh PRETRAINED_CKPT [SEEDS (default 1,2,3)] [extra run.py overrides...]
# Writes job dirs under outputs/superglue_all/<task>/ and the table + plot under outputs/superglue_all/.
set -euo pipefail
PRETRAINED=${1:?usage: run_all.sh PRETRAINED_CKPT [SEEDS] [overrides...]}
SEEDS=${2:-1,2,3}
shift $(( $# >= 2 ? 2 : 1 ))
ROOT=outputs/superglue_all
for task in record copa wsc rte boolq wic cb multirc; do
  python run.py -m +experiment=superglue_${task} task.pretrained="${PRETRAINED}" seed="${SEEDS}" \
    hydra.sweep.dir="${ROOT}/${task}" "$@"
done
python recipes/superglue/aggregate.py "${ROOT}"
