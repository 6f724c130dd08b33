#!/usr/bin/env bash
# The issue-5 measurements on a lent GPU (H100: plan_h100.json; H200: plan_h200.json), run from the repository
# root by the device tool:
#   bash experiments/real_engine/device_run.sh <seconds available> [plan file]
# Installs the carried wheels (.whl: fastapi, uvicorn, openai, pydantic, simpy, hydra, bitsandbytes ...), builds
# the random-weight Llama-2-7B checkpoint if this machine does not have them yet, runs qfleet-calibrate
# (resumable: the results database travels back and forth) until the time is nearly up, and packs the
# database, the exported profile and the engine logs into $OUT/results.tgz.
set -u
started=$(date +%s)
budget=${1:-560}
plan=${2:-experiments/real_engine/plan_h100.json}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
models=/tmp/qfleet-models
test -f $models/llama2-7b-bf16/config.json || python3 experiments/real_engine/build_random_llama.py --out $models/llama2-7b-bf16
# The tokenizer is cheap to rewrite; do it every time so a checkpoint built by an older script gets the current one.
python3 -c "from experiments.real_engine.build_random_llama import word_tokenizer; word_tokenizer(32000).save_pretrained('$models/llama2-7b-bf16')"
results=$(python3 -c "import json, os, sys; print(os.path.dirname(json.load(open(sys.argv[1]))['results_db']))" $plan)
mkdir -p $results
{ nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total --format=csv; python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda total_memory bytes', torch.cuda.get_device_properties(0).total_memory)"; } > $OUT/environment.txt 2>&1
cp $OUT/environment.txt $results/environment.txt
left=$(( budget - ($(date +%s) - started) - 25 ))
echo "qfleet-calibrate gets ${left} s"
timeout --signal=INT --kill-after=10 $left python3 -m calibrate.main plan_file=$plan 2>&1 | tee $OUT/calibrate.log
python3 - <<PY
import sqlite3, glob
for path in glob.glob("$results/*.sqlite"):
    con = sqlite3.connect(path); con.execute("PRAGMA wal_checkpoint(TRUNCATE)"); con.close()
PY
tar czf $OUT/results.tgz $results /tmp/qfleet-calibrate-work/logs 2>/dev/null
ls -la $OUT
