#!/usr/bin/env bash
# The LLM stage at full scale on one GPU: LoRA-tune the ranker profile (SmolLM2-135M) on
# every training user's prompts (several cut points each, the served pipeline's top 20,
# shuffled) and evaluate shortlist / untuned / tuned verbalizer on ALL users.
# See eval/gpu/README.md for the exact sequence of `run` calls.
#
#   bash eval/gpu/run.sh --stage 1     GPU machine, run 1: keep part 1 of the GGUF under $STAGE
#   bash eval/gpu/run.sh               GPU machine, run 2: join the parts, train, evaluate
#   bash eval/gpu/run.sh --dry-run     here, on CPU: pack a tiny subset, then the same steps
set -euo pipefail
cd "$(dirname "$0")/../.."

STAGE=${STAGE:-/tmp/recsmith-gpu}
PACK=${PACK:-eval/gpu/.pack}
PY=${PYTHON:-python3}
MODE=run
PART=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) MODE=dry ;;
    --stage) MODE=stage; PART="$2"; shift ;;
    *) echo "unknown option $1 (use --dry-run or --stage N)" >&2; exit 2 ;;
  esac
  shift
done
say() { echo "[run.sh $(date -u +%H:%M:%S)] $*"; }

if [ "$MODE" = dry ]; then
  # Same script end to end on a tiny subset: pack (the project venv: it tokenises with the
  # service's own prompt code), stage part 1, then the GPU steps on CPU.
  PY=${PYTHON:-.venv/bin/python}
  ROOT=$(mktemp -d /tmp/recsmith-gpu-dry.XXXXXX)
  STAGE=$ROOT/stage
  PACK=$ROOT/pack
  OUTDIR=${OUT:-$ROOT/out}
  say "dry run in $ROOT"
  "$PY" -m eval.gpu.pack pack --dry-run --out "$PACK" --cases "${CASES:-var/ml-100k-pipeline/cases.json}"
  "$PY" -m eval.gpu.pack stage --pack "$PACK" --part 1 --dest "$STAGE"
  rm -rf "$PACK/part1"  # as on the GPU machine: run 2 finds part 1 only in the stage folder
  EXTRA=(--device cpu --threads 2 --train-limit 4 --test-limit 12 --val-limit 2
         --batch 4 --micro 4 --eval-batch 4 --layers 2 --epochs 1 --tag dry-run)
elif [ "$MODE" = stage ]; then
  "$PY" -m eval.gpu.pack stage --pack "$PACK" --part "$PART" --dest "$STAGE"
  exit 0
else
  OUTDIR=${OUT:?set by the run tool: results come back from \$OUT}/eval/results
  EXTRA=(--device cuda --epochs "${EPOCHS:-3}" --minutes "${TRAIN_MINUTES:-4}" --batch 32
         --micro 32 --eval-batch 128 --lr "${LR:-5e-4}" --tag gpu)
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
fi

export PYTHONPATH="$PACK/data/pylib${PYTHONPATH:+:$PYTHONPATH}"  # the carried gguf package
say "joining the GGUF parts"
GGUF=$("$PY" -m eval.gpu.pack unpack --pack "$PACK" --dest "$STAGE" | tail -1)
say "model: $GGUF"
mkdir -p "$OUTDIR"
start=$(date +%s)
"$PY" -m eval.gpu.lorarun --data "$PACK/data" --gguf "$GGUF" --out "$OUTDIR" "${EXTRA[@]}" 2>&1 \
  | grep -v -i "warn" | tee "$OUTDIR/run.log"
say "done in $(( $(date +%s) - start )) s; results in $OUTDIR"
ls -la "$OUTDIR"
