#!/usr/bin/env bash
# The GPU runs still owed to issues 21 and 23, in priority order, on one lent GPU machine whose calls last 10 minutes.
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
    # 1. The 12 GB story with the offload plan (prompts encoded once, UNet resident), cold, warm and at batch 4; the
    #    queue before stopped here on the index-less torch.device("cuda") that the per-process cap reader refuses.
    step e2e_build 300 python3 bench/e2e.py --work /tmp/lsb --only build
    step mem12gb 300 python3 bench/mem12gb.py --work /tmp/lsb --only story --json "$RES/mem12gb.json"
    step mem12gb_warm 300 python3 bench/mem12gb.py --work /tmp/lsb --only story --json "$RES/mem12gb_warm.json"
    step mem12gb_b4 300 python3 bench/mem12gb.py --work /tmp/lsb --only story --story-args "--offload --batch-size 4" \
        --json "$RES/mem12gb_b4.json"
    # 2. The 24 GB preset with fp8 weights instead of checkpointing (the issue's >= 20 img/s), a warm window that
    #    fits the steps this time.
    step peer_24g 460 python3 bench/peer_kohya.py "${kohya[@]}" --json "$RES/peer_24g.json" \
        --configs ours-b4-24g-fp8w,ours-b2-24g-fp8w --steps 40 --warm 8 --timeout 200
    step gpu_tests 420 python3 -m pytest -q -m gpu -p no:cacheprovider tests/train/test_compile_auto.py \
        tests/models/test_fp8.py tests/train/test_train_speed.py tests/generate/test_generate_speed.py
    # 3. Our bf16 Flux row beside kohya's (its JSON was lost with the last queue's results): the Kolors folder goes
    #    first, to leave the disk to the 34 GB Flux folder.
    rm -rf /tmp/lsb
    step flux_peers 300 python3 bench/flux_peers.py --work /tmp/fpeer --configs ours-bf16 \
        --json "$RES/flux_peers.json" --logs "$RES/flux_peers" --cleanup
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
