#!/usr/bin/env bash
# The paper's tables at the paper's scale on a lent GPU, within one loan: about 15 minutes of device time in all, at
# most 10 per call, and only the working tree travels (not ../shared), so the inputs are made here and carried.
#
# Here, once (writes the protocol's inputs and cases.json under benchmarks/results/paper_inputs, git-ignored):
#   python benchmarks/paper_tables.py --table all --scale paper --inputs benchmarks/results/paper_inputs --prepare
# On the device, one call per stage, carrying benchmarks/results/paper_inputs (run's `carry`):
#   STAGE=x4 MINUTES=7 bash benchmarks/paper_tables_device.sh        # first: Set5 + Set14 x4, --paper-exact (fp32, 2017)
#   STAGE=x8 MINUTES=7 bash benchmarks/paper_tables_device.sh        # then x8 (the machine kept warm: a rerun resumes)
#   STAGE=denoise25 MINUTES=7 bash benchmarks/paper_tables_device.sh # then CSet9 at sigma 25
# Each stage's scored images come back as one small file directly under $OUT ($OUT/STAGE.jsonl, one image a line:
# at most 8 files come back, none deeper than 2 folders) with its log; back here, merge them into the committed
# table (benchmarks/results/paper_scores/TABLE.json and .md):
#   python benchmarks/paper_tables.py --merge /work/.device/...   # the folder the call's files landed in
# A stage stops its fits after MINUTES (each saves a checkpoint) and scores what finished; the same stage again on
# the same warm machine resumes the rest. No peers on the device: they run here (--report). ITERATIONS=2 and
# DEVICE=cpu check the script on a CPU (tests/test_paper_tables.py runs it so on made-up data).
set -u -o pipefail
OUT=${OUT:?set OUT: the folder whose files come back}
STAGE=${STAGE:-x4}
MINUTES=${MINUTES:-7}
DEVICE=${DEVICE:-cuda}
PACK=${PACK:-4}  # fits of the same size and network share a step on a GPU (docs/batch.md); others run alone
INPUTS=${INPUTS:-benchmarks/results/paper_inputs}
WORK=${WORK:-benchmarks/results/paper_device}  # the fits and checkpoints: stay on the device, a rerun resumes them
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
case $STAGE in
  x4) table=sr only=(Set5-x4 Set14-x4) ;;
  x8) table=sr only=(Set5-x8 Set14-x8) ;;
  denoise25) table=denoise only=(-s25) ;;
  *) echo "paper_tables_device: STAGE must be x4, x8 or denoise25, got $STAGE" >&2; exit 2 ;;
esac
if [ ! -s "$INPUTS/$table/cases.json" ]; then
  echo "paper_tables_device: no $INPUTS/$table/cases.json: run the --prepare command here and carry $INPUTS" >&2
  exit 2
fi
mkdir -p "$OUT"
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; echo "stage $STAGE, $MINUTES min, $(date -u +%FT%TZ)"; } > "$OUT/$STAGE.log"
$py benchmarks/paper_tables.py --table "$table" --scale paper --settings paper-2017 --only "${only[@]}" \
  --inputs "$INPUTS" --data "$WORK/no-data" --out "$WORK" --scores "$WORK/scores" --device "$DEVICE" --pack "$PACK" \
  --checkpoint-every 30 --max-minutes "$MINUTES" --no-peers --rows-out "$OUT/$STAGE.jsonl" -q \
  ${ITERATIONS:+--iterations "$ITERATIONS"} 2>&1 | tee -a "$OUT/$STAGE.log" | grep -E "^\| \*\*mean|paper_tables"
code=${PIPESTATUS[0]}
echo "paper_tables_device: stage $STAGE exit $code; $(wc -l < "$OUT/$STAGE.jsonl" 2>/dev/null || echo 0) images scored"
exit $code
