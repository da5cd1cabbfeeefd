#!/usr/bin/env bash
# The paper's tables on a lent GPU, in chunks that fit one device call (at most 10 minutes each), resumable across
# calls: every call first measures what has not been measured yet, then continues the paper-scale tables for the
# time left. Results (JSON, markdown, logs) go to $OUT; carry it back between calls (and pass it in again) to continue.
#   OUT=benchmarks/results/paper_gpu DATA=../shared/data bash benchmarks/paper_tables_device.sh
# Stages (seconds; 0 skips): THROUGHPUT_S (one fit alone vs --pack 2/4/8 at 256 and 512 px, eager + CUDA graphs),
# COMPILED_S (the same with --backend inductor at 256 px), TABLES_MIN (minutes of paper-scale tables, --pack $PACK).
set -u
OUT=${OUT:-benchmarks/results/paper_gpu}
DATA=${DATA:-../shared/data}
PACK=${PACK:-4}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
stage() { echo "== $1 ($(date +%T))"; }
{ nvidia-smi -L; lscpu | grep -E "Model name|^CPU\(s\)"; } 2>&1 | tee "$OUT/env.log"

stage throughput
if [ "${THROUGHPUT_S:-150}" != 0 ] && [ ! -s "$OUT/throughput.json" ]; then
  timeout "${THROUGHPUT_S:-150}" $py benchmarks/batch_throughput.py --data "$DATA" --out "$OUT" --sizes 256,512 \
    --images 8 --iterations 200 --modes sequential,pack2,pack4,pack8 --fit-args "--device cuda" \
    --json throughput.json 2>&1 | tail -12
fi
stage compiled
if [ "${COMPILED_S:-120}" != 0 ] && [ ! -s "$OUT/throughput_inductor.json" ]; then
  timeout "${COMPILED_S:-120}" $py benchmarks/batch_throughput.py --data "$DATA" --out "$OUT" --sizes 256 \
    --images 8 --iterations 200 --modes sequential,pack4 --fit-args "--device cuda --backend inductor" \
    --json throughput_inductor.json 2>&1 | tail -6
fi
stage tables
if [ "${TABLES_MIN:-5}" != 0 ]; then
  $py benchmarks/paper_tables.py --table all --scale paper --data "$DATA" --out "$OUT" --device cuda \
    --pack "$PACK" --checkpoint-every 30 --max-minutes "${TABLES_MIN:-5}" -q 2>&1 | tee "$OUT/tables.log" | grep -E "mean|paper_tables"
fi
stage done
