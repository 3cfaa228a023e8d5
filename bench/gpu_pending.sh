#!/usr/bin/env bash
# A queue of GPU runs, in priority order, on one lent GPU machine whose calls last 10 minutes. It holds the last
# queue run (2026-12-03: the 12 GB story after its fix; bench/RESULTS.md, fifth queue): edit `queue` for the next.
#
# The first call starts the queue in its own process session (it outlives the call while the machine stays
# warm); every call waits up to WAIT seconds, then packs what has finished into $OUT/results.tgz. Call it
# again, straight away, until the log says "queue done". Needs `.whl` (our wheels, torchao among them) carried,
# and `.peers/kohya.tar.xz` (kohya sd-scripts plus the packages it pins, made by bench/pack_kohya.py) for the rows
# that run kohya (none of those left in this queue is one). The tracked files (49.9 MB) and `.whl` (14.9 MB:
# diffusers, pydantic and its four, torchao, prodigyopt, the CJK font; ImageHash and PyWavelets stay behind, no GPU
# step deduplicates) leave 2.3 of the 67.1 MB a call may carry: too little for kohya's 2.6 MB, so carry it only in a
# queue of kohya rows, with the font wheel left out.
#
#     bash bench/gpu_pending.sh 560
set -u
WAIT=${1:-560}
RES=/tmp/lsres
mkdir -p "$RES"
started=$(date +%s)

queue() {
    set -u
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/ours/*.whl
    if [ -e .peers/kohya.tar.xz ]; then mkdir -p /tmp/k && tar xJf .peers/kohya.tar.xz -C /tmp/k; fi
    export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RES/gpu.txt"
    python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)" >> "$RES/gpu.txt" 2>&1
    step() {  # name, limit in seconds, command...
        local name=$1 limit=$2; shift 2
        echo "$(date +%T) start $name" >> "$RES/queue.log"
        timeout -k 15 "$limit" "$@" > "$RES/$name.log" 2>&1
        echo "$(date +%T) end $name rc=$?" >> "$RES/queue.log"
    }
    local kohya=(--kohya /tmp/k/sd-scripts --kohya-site /tmp/k/ksite --work /tmp/peer)
    # The device sets PYTHONDONTWRITEBYTECODE=1 and the wheels install with --no-compile: without bytecode the
    # generate imports took 17-23 s there, with it 12 s (2026-12-02 #6). Write it, as an ordinary pip install has it.
    unset PYTHONDONTWRITEBYTECODE
    # 1. The 12 GB story with the offload plan, cold then warm: the queue before (2026-12-03 06:28) ran it at batch 3
    #    with a bf16 UNet, and the second batch's decode of three pictures ran out of memory; batches now decode
    #    one picture at a time. Then the GPU test that failed there (a compile skip reported after compiling).
    step e2e_build 300 python3 bench/e2e.py --work /tmp/lsb --only build
    step mem12gb 300 python3 bench/mem12gb.py --work /tmp/lsb --only story --json "$RES/mem12gb.json"
    step mem12gb_warm 300 python3 bench/mem12gb.py --work /tmp/lsb --only story --json "$RES/mem12gb_warm.json"
    step gpu_tests 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/generate/test_generate_speed.py
    echo "$(date +%T) queue done" >> "$RES/queue.log"
}

if [ ! -e "$RES/queue.log" ]; then
    echo "$(date +%T) queue started" > "$RES/queue.log"
    export -f queue
    RES=$RES setsid bash -c queue > "$RES/queue.out" 2>&1 < /dev/null &
fi
while [ $(( $(date +%s) - started )) -lt "$WAIT" ] && ! grep -q "queue done" "$RES/queue.log"; do
    sleep 5
done
cat "$RES/queue.log"
tail -n 3 "$RES"/*.log | tail -n 60
tar czf "$OUT/results.tgz" -C "$RES" . 2>/dev/null
