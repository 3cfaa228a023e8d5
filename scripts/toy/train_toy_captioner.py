"""Train the toy captioner (models/captioners/toy_net.py) on rendered toy-world pictures.

Scenes are drawn at random in every render style and size, the network learns
each attribute with a cross-entropy head, and held-out pictures (another seed)
measure the share whose every attribute is right. Minutes on one GPU, longer
on a CPU:

  PYTHONPATH=src python scripts/toy/train_toy_captioner.py --out toy-captioner --count 60000 --epochs 14

writes ``model.safetensors`` (float16), ``config.json`` and ``metrics.json`` to
--out; copy the first two to src/lorastory/models/assets/toy/captioner/.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lorastory.models.captioners.toy_net import ATTRIBUTES, HEADS, INPUT, attribute_hits, build_net, decode, split_heads
from lorastory.models.captioners.toy_net import targets, to_input
from lorastory.toyworld.render import render
from lorastory.toyworld.scene import sample_scene
from lorastory.toyworld.vocab import STYLES

SIZES = (64, 96, 128, 128, 160)


def draw(args: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    seed, index = args
    rng = random.Random(seed * 1_000_003 + index)
    scene = sample_scene(rng)
    picture = render(scene, rng.choice(tuple(STYLES)), rng.choice(SIZES), seed=index)
    array = ((to_input([picture])[0] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return array, list(targets(scene).values())


def dataset(count: int, seed: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    with ProcessPoolExecutor(workers) as pool:
        drawn = list(pool.map(draw, [(seed, i) for i in range(count)], chunksize=256))
    images = torch.from_numpy(np.stack([a for a, _ in drawn]))
    labels = torch.tensor([t for _, t in drawn], dtype=torch.long)
    return images, labels


def loss_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    blocks = split_heads(logits)
    return sum(F.cross_entropy(block, labels[:, k], ignore_index=-1) for k, block in enumerate(blocks.values()))


def evaluate(net: torch.nn.Module, count: int, seed: int, device: str) -> dict[str, float]:
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    hits = {name: 0 for name in (*ATTRIBUTES, "all")}
    net.eval()
    for style in STYLES:
        for start in range(0, count, 256):
            batch = scenes[start : start + 256]
            pictures = [render(scene, style, 128, seed=start + i) for i, scene in enumerate(batch)]
            with torch.no_grad():
                guesses = decode(net(to_input(pictures).to(device)).cpu())
            for truth, guess in zip(batch, guesses):
                found = attribute_hits(truth, guess)
                for name, ok in found.items():
                    hits[name] += ok
                hits["all"] += all(found.values())
    return {f"{name}": value / (count * len(STYLES)) for name, value in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval", type=int, default=500, help="held-out pictures per style")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    started = time.time()
    images, labels = dataset(args.count, args.seed, args.workers)
    drawn = time.time() - started
    images, labels = images.to(device), labels.to(device)
    net = build_net().to(device)
    steps = args.epochs * math.ceil(args.count / args.batch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps, pct_start=0.1)
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(args.count, device=device)
        total = 0.0
        for start in range(0, args.count, args.batch):
            index = order[start : start + args.batch]
            x = images[index].float() / 127.5 - 1.0  # stored as uint8 NCHW
            loss = loss_of(net(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / args.count:.4f} ({time.time() - started:.0f} s)", flush=True)
    metrics = evaluate(net, args.eval, args.seed + 10_000, device)
    metrics.update(count=args.count, epochs=args.epochs, seconds_drawing=round(drawn, 1), seconds=round(time.time() - started, 1))
    print(json.dumps(metrics, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in net.state_dict().items()}
    save_file(state, str(args.out / "model.safetensors"))
    config = {"model_type": "lorastory_toy_captioner", "input": INPUT, "heads": {k: len(v) for k, v in HEADS.items()}}
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    main()
