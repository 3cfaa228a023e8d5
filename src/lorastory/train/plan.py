"""What a run trains on: every dataset's pictures read, each placed (crop or bucket), once per flip variant."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lorastory.train.buckets import assign_bucket, bucket_sizes, small_buckets
from lorastory.train.config import TrainConfig
from lorastory.train.data import Placement, TrainItem, place, read_train_folder
from lorastory.train.datasets import Dataset
from lorastory.train.order import Bucket
from lorastory.train.step import Example


@dataclass(frozen=True)
class Planned:
    """One training sample before caching: a picture, its placement and its dataset (an index)."""

    item: TrainItem
    placement: Placement
    dataset: int


def read_dataset(dataset: Dataset, say: Callable[[str], None]) -> list[TrainItem]:
    """A training folder's usable pictures; skipped rows and all-empty captions are said."""
    items, problems = read_train_folder(dataset.folder)
    for problem in problems:
        say(f"skipped {problem}")
    if problems:
        say(f"warning: skipped {len(problems)} row(s) of {dataset.folder} (listed above); "
            f"training on {len(items)} image(s)")
    if not any(item.caption for item in items) and not dataset.captions.trigger_word and not dataset.captions.prefix:
        say("warning: captions all empty: the LoRA learns without text conditioning (a style for every prompt)")
    return items


def plan_training(config: TrainConfig, say: Callable[[str], None]) -> tuple[list[Dataset], list[Planned]]:
    """The run's datasets and their samples, once per flip variant; deterministic for the seed."""
    datasets = config.resolved_datasets()
    rng = random.Random(config.seed)  # one generator through all datasets: random crops
    planned = []
    for index, dataset in enumerate(datasets):
        buckets = bucket_sizes(dataset.resolution, config.bucket_step) if dataset.buckets else None
        for item in read_dataset(dataset, say):
            target = assign_bucket(item.size, buckets) if buckets else (dataset.resolution, dataset.resolution)
            for flip in (False, True) if config.random_flip else (False,):
                planned.append(Planned(item, place(item, target, config.center_crop or bool(buckets), flip, rng), index))
    if any(d.buckets for d in datasets):
        targets = [p.placement.target for p in planned if not p.placement.flip]
        for bucket, count in small_buckets(targets, config.batch_size).items():
            say(f"warning: bucket {bucket[0]}x{bucket[1]} has {count} image(s), fewer than the batch size {config.batch_size}")
    if len(datasets) > 1:
        say("datasets: " + "; ".join(_summary(d, planned, i) for i, d in enumerate(datasets)))
    return datasets, planned


def order_samples(examples: Sequence[Example], datasets: list[Dataset]) -> tuple[list[tuple[str, Bucket]], list[int]]:
    """What :func:`lorastory.train.order.epoch_batches` orders: each example's image key and bucket, and its
    repeats. An image's flip variants share its key (its dataset and file)."""
    samples = [(f"{e.dataset}:{e.item.path}", e.placement.target) for e in examples]
    return samples, [datasets[e.dataset].repeats for e in examples]


def _summary(dataset: Dataset, planned: list[Planned], index: int) -> str:
    images = len({p.item.path for p in planned if p.dataset == index})
    kind = ", regularization" if dataset.is_regularization else ""
    return (f"{dataset.folder}: {images} image(s) x {dataset.repeats} repeat(s) = {images * dataset.repeats} per epoch"
            f" (loss weight {dataset.loss_weight:g}{kind})")
