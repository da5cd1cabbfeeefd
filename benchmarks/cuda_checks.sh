#!/usr/bin/env bash
# The CUDA checks a session with a lent GPU runs in one go: the CUDA tests, the
# speed of the CUDA paths (CUDA graphs or not, fp32 / bf16 / fp16, auto = inductor), then the schedule study. Logs and JSON go to $OUT.
#   OUT=/tmp/cuda DATA=../shared/data bash benchmarks/cuda_checks.sh
# DATA holds F16_GT.png, kate.png and zebra_GT.png; each stage has its own time limit (TESTS_S, SPEED_S, COMPILE_S,
# STUDY_S seconds; 0 skips the stage); JOBS, STUDY_ARGS and DEVICE (cpu to try the script here) shape the study.
set -u
OUT=${OUT:-benchmarks/results/cuda}
DATA=${DATA:-../shared/data}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
{
  nvidia-smi -L
  $py -c 'import torch, onnxruntime as ort; print("torch", torch.__version__, "cuda", torch.version.cuda,
torch.cuda.get_device_name(), "onnxruntime", ort.__version__, ort.get_available_providers())'
  lscpu | grep -E "Model name|^CPU\(s\)"
} 2>&1 | tee "$OUT/env.log"
stage() { echo "== $1 ($(date +%T))"; }  # a stage whose limit is 0 is skipped
stage tests
[ "${TESTS_S:-120}" = 0 ] || timeout "${TESTS_S:-120}" $py -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log" | tail -30
stage speed
[ "${SPEED_S:-80}" = 0 ] || timeout "${SPEED_S:-80}" $py benchmarks/fit_speed.py --device cuda --nets denoise --sizes 256,512 \
  --backends eager-nographs,eager --precisions fp32,bf16,fp16 --iterations 20 --warmup 5 \
  --out "$OUT/fit_speed_cuda.json" 2>&1 | grep -v "^  "
stage compiled
[ "${COMPILE_S:-100}" = 0 ] || timeout "${COMPILE_S:-100}" $py benchmarks/fit_speed.py --device cuda --nets denoise --sizes 256 --backends auto \
  --precisions fp32 --iterations 20 --warmup 5 --out "$OUT/fit_speed_cuda_auto.json" 2>&1 | grep -v "^  "
stage study
if [ "${STUDY_S:-250}" != 0 ]; then
  # its own process group, killed whole at the limit: the study's spawned workers would outlive a plain timeout
  setsid $py benchmarks/schedule_study.py --device "${DEVICE:-cuda}" --jobs "${JOBS:-6}" --data "$DATA" --out "$OUT" \
    ${STUDY_ARGS:-} >"$OUT/study.log" 2>&1 &
  study=$!
  (sleep "${STUDY_S:-250}"; kill -9 -- "-$study" 2>/dev/null) &
  watchdog=$!
  wait "$study"
  kill "$watchdog" 2>/dev/null
  tail -30 "$OUT/study.log"
fi
stage done
