#!/usr/bin/env bash
# Every per-host measurement the README quotes, in one run, into benchmarks/results/<host>/:
# the trained model's gate (first, where this host has none yet), the TinyCLIP-8M-shaped
# fixture's on-device checks, `edgeclip bench --rounds 3` at batch 1 and
# 32 against torch eager, cold start, memory by step and probe stability; then the README's
# tables are rendered again. 3 min on the 2-core AMX Xeon with a kept fixture (FIXTURE=DIR).
# Run it on a quiet machine: the bench records CPU steal and the GEMM peak, so a slow spell
# shows in the files.
#
#   bash benchmarks/host_sweep.sh            # build the fixture in a temporary folder
#   FIXTURE=/tmp/dc bash benchmarks/host_sweep.sh   # keep (or reuse) it there
#   TRAINED_GATE=0 bash benchmarks/host_sweep.sh    # never run the trained gate (4 min)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
FIXTURE=${FIXTURE:-$(mktemp -d)}
BUNDLE="$FIXTURE/tinyclip-8m"
HOST=$("$PY" -c "from benchmarks.hosts import host_label; print(host_label())")
OUT="benchmarks/results/$HOST"

echo "host $HOST: $(grep -ow -E 'amx_tile|avx512_vnni|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

# A host seen for the first time gets the trained model's gate first (about 4 min on 2 cores):
# which INT8 configurations keep their answers here is what the speed targets count.
if [ ! -f "$OUT/variants_gate_trained.json" ] && [ "${TRAINED_GATE:-1}" = 1 ]; then
    step "trained model's gate on this host (none in $OUT yet)"
    mkdir -p "$OUT"
    "$PY" -m benchmarks.variants_gate_trained --work "$FIXTURE/trained-gate" \
        --out "$OUT/variants_gate_trained.json"
fi

# The INT8 configurations the trained model's gate kept on this host, if it was run here: the
# fixture then times those, not whichever its random weights let through (a one-image verdict).
PINS=$("$PY" - "$OUT/variants_gate_trained.json" <<'PY'
import json, os, sys
if os.path.isfile(sys.argv[1]):
    rows = json.load(open(sys.argv[1]))["variants"]
    print(",".join(f"{r['id'][:-5]}={r['config']}" for r in rows
                   if r["id"].endswith("-int8") and r["passed"] and r.get("config")))
PY
)
echo "INT8 configurations pinned from $OUT/variants_gate_trained.json: ${PINS:-none (searched)}"
step "on-device checks of the fixture in $FIXTURE (built first if missing)"
"$PY" -m benchmarks.device_checks --work "$FIXTURE" ${PINS:+--int8-config "$PINS"}
step "edgeclip bench --rounds 3 --interleave, batch 1 and 32, $THREADS threads"
"$PY" -m edgeclip bench "$BUNDLE" --rounds 3 --interleave --batch-sizes 1,32 --threads "$THREADS" -o "$OUT"
# The int8 variants whose conversion gate failed on this host's build are not in the bundle.
shipped() {
    "$PY" - "$BUNDLE/manifest.json" "$1" <<'PY'
import json, sys
have = {v["id"] for v in json.load(open(sys.argv[1]))["variants"]} | {"auto"}
want = sys.argv[2].split(",")
gone = [w for w in want if w not in have]
if gone:
    print("not in this bundle (conversion gate failed here): " + ", ".join(gone), file=sys.stderr)
print(",".join(w for w in want if w in have))
PY
}
step "cold start"
"$PY" -m benchmarks.cold_start "$BUNDLE" --threads "$THREADS" --runs 7 \
    --variants "$(shipped openvino-int8,openvino-int8-weights,openvino-fp16,onnx-int8,auto)"
step "memory by step"
"$PY" -m benchmarks.memory_stages "$BUNDLE" --threads "$THREADS" \
    --variants "$(shipped openvino-int8,openvino-int8-weights,openvino-fp16,onnx-int8)"
step "probe stability"
"$PY" -m benchmarks.probe_stability "$BUNDLE" --threads "$THREADS"
step "README tables"
"$PY" scripts/render_readme.py
echo
echo "wrote $OUT/; check git diff README.md $OUT"
