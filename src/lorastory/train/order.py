"""Which samples each optimizer step trains on, for any number of processes.

An epoch is cut into *global* batches of ``batch size × processes`` samples, each from one bucket
(a bucket's last batch may be short), in an order drawn from the seed and the epoch only. Process
``k`` of ``n`` takes slots ``k·B … k·B+B-1`` of each global batch, so 2 processes with batch B
train on exactly what 1 process with batch 2B trains on. Each sample's noise and timestep come
from a seed of its own (:func:`sample_seed`), so they do not depend on the batch size, the number
of processes or where a run was resumed.

Resuming with another global batch size (another number of processes) keeps the epoch's
position in samples: the part already trained is replayed as a *history* of
``(global batch, samples)`` pairs, and the rest of the epoch is cut with the new size from the
samples that part did not use. No sample is skipped or repeated within the epoch.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

Bucket = tuple[int, int]
History = list[tuple[int, int]]  # (global batch size, samples trained with it), oldest first


def epoch_batches(
    samples: Sequence[tuple[str, Bucket]],
    seed: int,
    epoch: int,
    global_batch: int,
    history: Sequence[tuple[int, int]] = (),
    repeats: Sequence[int] | None = None,
) -> list[list[int]]:
    """Global batches of *draws* for ``epoch``, in training order.

    ``samples`` gives each sample's image and bucket; the flip variants of one image share the
    image, and each draw of it uses one of them, chosen by the epoch's generator. ``repeats``
    (per sample, the same for an image's variants; default 1) is how many times an image is drawn
    per epoch. Draw ``r·len(samples) + i`` is repeat ``r`` of sample ``i`` (:func:`draw_sample`),
    so with no repeats draws are sample indices, and every draw of an epoch is a distinct number
    (its noise seed). ``history`` lists the parts of the epoch already trained with other global
    batch sizes; their batches come first.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    variants: dict[str, list[int]] = {}
    for index, (image, _) in enumerate(samples):
        variants.setdefault(image, []).append(index)
    by_bucket: dict[Bucket, list[int]] = {}
    count = len(samples)
    for group in variants.values():
        for repeat in range(repeats[group[0]] if repeats is not None else 1):
            chosen = rng.choice(group)
            by_bucket.setdefault(samples[chosen][1], []).append(chosen + repeat * count)
    for bucket in sorted(by_bucket):
        rng.shuffle(by_bucket[bucket])

    order: list[list[int]] = []
    used: set[int] = set()
    for size, count in history:
        taken = 0
        for batch in _cut(by_bucket, size, used, seed, epoch):
            if taken >= count:
                break
            order.append(batch)
            taken += len(batch)
        if taken != count:
            raise ValueError(f"history part ({size}, {count}) does not end on a batch boundary")
        used.update(i for batch in order for i in batch)
    return order + _cut(by_bucket, global_batch, used, seed, epoch)


def _cut(by_bucket: dict[Bucket, list[int]], size: int, used: set[int], seed: int, epoch: int) -> list[list[int]]:
    """The unused samples in batches of ``size`` (one bucket each), shuffled by a generator of their own."""
    batches = []
    for bucket in sorted(by_bucket):
        left = [i for i in by_bucket[bucket] if i not in used]
        batches += [left[start : start + size] for start in range(0, len(left), size)]
    random.Random(f"{seed}/{epoch}/{len(used)}").shuffle(batches)
    return batches


def draw_sample(draw: int, samples: int) -> int:
    """The sample index of a draw of :func:`epoch_batches` over ``samples`` samples."""
    return draw % samples


def batches_before(order: Sequence[Sequence[int]], samples_done: int) -> int:
    """How many batches of ``order`` hold the first ``samples_done`` samples."""
    total = 0
    for count, batch in enumerate(order):
        if total == samples_done:
            return count
        total += len(batch)
    if total == samples_done:
        return len(order)
    raise ValueError(f"{samples_done} samples do not end on a batch boundary of this epoch")


def continued_history(history: Sequence[tuple[int, int]], global_batch: int, samples_done: int,
                      new_global_batch: int) -> History:
    """The history to resume an epoch with ``new_global_batch`` after ``samples_done`` samples."""
    parts = [(int(size), int(count)) for size, count in history]
    current = samples_done - sum(count for _, count in parts)
    if new_global_batch == global_batch or current == 0:
        return parts
    return [*parts, (global_batch, current)]


def process_share(batch: Sequence[int], rank: int, processes: int, per_process: int,
                  pad: bool = False) -> tuple[list[int], list[float]]:
    """This process's samples of a global batch, and each one's weight in the loss.

    One process takes the whole batch. With several, process ``rank`` takes its ``per_process``
    slots; a bucket's short last batch is padded with repeats of its first sample at weight 0,
    so every process runs a full batch of the same shape (a process with nothing to do would
    stall the others' gradient all-reduce). ``pad`` pads one process's short batch the same way,
    so compiled blocks never meet a new batch size (a recompile of 20-40 s); the samples, their
    noise and the loss stay those of the short batch, so resume and the trained weights do not change.
    """
    if processes == 1 and not pad:
        return list(batch), [1.0] * len(batch)
    share = list(batch[rank * per_process : (rank + 1) * per_process])
    pad = per_process - len(share)
    return share + [batch[0]] * pad, [1.0] * len(share) + [0.0] * pad


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of draw ``index``'s noise and timestep in ``epoch``."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
