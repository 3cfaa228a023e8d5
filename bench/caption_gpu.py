"""Captioning throughput: lorastory's batched captioners vs a plain transformers loop of one picture at a time.

Random weights of real-size models, built offline from their published
hyperparameters (no download): BLIP-2 OPT-2.7B, Qwen2.5-VL-3B, and a WD14-style
ViT-B/16 tagger at 448 px exported to ONNX. Each captioner writes exactly
``--tokens`` new tokens per picture (min = max new tokens: random weights would
stop anywhere), so the batched and the plain loop do the same work. Prints a
markdown table (pictures/s per batch size and the speed-up over the plain loop).

  python bench/caption_gpu.py                 # on a CUDA machine
  python bench/caption_gpu.py --tiny          # the tiny random models, on the CPU (a smoke run)

Needs only torch, transformers and onnxruntime (onnxruntime-gpu when present);
run it from the repository root (it puts ``src`` on the path).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from lorastory.models.captioners.base import GenerationOptions  # noqa: E402
from lorastory.models.captioners.img2seq import Img2SeqCaptioner  # noqa: E402
from lorastory.models.captioners.vlm import VlmCaptioner  # noqa: E402


def pictures(count: int, side: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((side, side), Image.NEAREST)
            for _ in range(count)]


def real_blip2(dtype: torch.dtype, device: str) -> Img2SeqCaptioner:
    import transformers as tf

    from lorastory.models.captioners.tiny import _byte_bpe

    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(["</s>", "<pad>"]), bos_token="</s>",
                                           eos_token="</s>", pad_token="<pad>", unk_token="</s>")
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.image_token = "<image>"
    config = tf.Blip2Config(
        vision_config=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                           image_size=224, patch_size=14, qkv_bias=True),
        qformer_config=dict(vocab_size=30523, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072, encoder_hidden_size=1408),
        text_config=dict(model_type="opt", vocab_size=50272, hidden_size=2560, ffn_dim=10240, num_hidden_layers=32,
                         num_attention_heads=32, word_embed_proj_dim=2560, max_position_embeddings=2048,
                         bos_token_id=2, eos_token_id=2, pad_token_id=1),
        num_query_tokens=32, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    with torch.device(device):
        model = tf.Blip2ForConditionalGeneration(config).to(dtype).eval()
    processor = tf.Blip2Processor(tf.BlipImageProcessor(size={"height": 224, "width": 224}), tokenizer, num_query_tokens=32)
    return Img2SeqCaptioner("blip-2", "random BLIP-2 OPT-2.7B", model, processor, torch.device(device))


def real_qwen(dtype: torch.dtype, device: str) -> VlmCaptioner:
    import transformers as tf

    from lorastory.models.captioners.tiny import QWEN_SPECIALS, _byte_bpe

    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=_byte_bpe(QWEN_SPECIALS), eos_token="<|im_end|>",
                                           pad_token="<|endoftext|>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIALS}
    mrope = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0}
    config = tf.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                         rope_parameters=mrope, tie_word_embeddings=True, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = tf.Qwen2_5_VLForConditionalGeneration(config).to(dtype).eval()
    image_processor = tf.Qwen2VLImageProcessor(min_pixels=448 * 448, max_pixels=448 * 448)
    return VlmCaptioner("qwen2_5_vl", "random Qwen2.5-VL-3B", model, image_processor, tokenizer, torch.device(device))


def wd14_vit(folder: Path, tiny: bool) -> Path:
    """A ViT-B/16 tagger at 448 px (WD14 v3's shape: NHWC BGR in, sigmoid over 10,861 tags out) as ONNX."""
    import transformers as tf

    from lorastory.models.captioners.tiny import write_tag_table

    side, tags = (64, 40) if tiny else (448, 10861)
    vit = tf.ViTConfig(image_size=side, patch_size=16, hidden_size=64 if tiny else 768, num_hidden_layers=1 if tiny else 12,
                       num_attention_heads=2 if tiny else 12, intermediate_size=128 if tiny else 3072)

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = tf.ViTModel(vit, add_pooling_layer=False)
            self.head = torch.nn.Linear(vit.hidden_size, tags)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pixels = x.flip(-1).permute(0, 3, 1, 2) / 127.5 - 1.0
            return torch.sigmoid(self.head(self.vit(pixel_values=pixels).last_hidden_state[:, 0]))

    folder.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, side, side, 3)
    torch.onnx.export(Tagger().eval(), (dummy,), str(folder / "model.onnx"), input_names=["input_1:0"],
                      output_names=["predictions_sigmoid"], dynamic_axes={"input_1:0": {0: "batch"}}, dynamo=False)
    write_tag_table(folder, [(f"tag_{i}", 9 if i < 4 else 0) for i in range(tags)])
    return folder


def rate(run, images: list[Image.Image], batch: int) -> float:
    run(images[:batch])  # warm-up (kernels, allocator)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for index in range(0, len(images), batch):
        run(images[index : index + batch])
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def plain_loop(captioner, options: GenerationOptions):
    """One picture per call, straight through transformers (the processor and generate, no batching)."""
    def run(images: list[Image.Image]) -> None:
        for image in images:
            captioner.generate([image], None, options)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the CPU (a smoke run)")
    parser.add_argument("--batch-sizes", default="8,32,64")
    parser.add_argument("--pictures", type=int, default=128, help="pictures per batched measurement")
    parser.add_argument("--plain-pictures", type=int, default=16, help="pictures for the one-at-a-time loop")
    parser.add_argument("--tagger-pictures", type=int, default=32, help="pictures per tagger measurement")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--only", default="blip2,qwen2_5_vl,wd14")
    args = parser.parse_args()
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    options = GenerationOptions(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    rows = []
    for kind in args.only.split(","):
        try:
            rows += measure(kind, args, sizes, options, dtype, device)
        except Exception as err:  # noqa: BLE001  one model failing (memory, an exporter) leaves the others' rows
            rows.append((kind, f"failed: {type(err).__name__}: {str(err)[:120]}", 0, float("nan"), float("nan"), 0.0))
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{args.tokens} new tokens per caption; device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}\n")
    print("| model | runs on | batch | pictures/s | one-at-a-time pictures/s | speed-up | build s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for source, where, size, speed, plain, built in rows:
        print(f"| {source} | {where} | {size} | {speed:.1f} | {plain:.2f} | {speed / plain:.1f}x | {built:.0f} |", flush=True)


def measure(kind: str, args: argparse.Namespace, sizes: list[int], options: GenerationOptions, dtype: torch.dtype,
            device: str) -> list[tuple]:
    """(model, device, batch, pictures/s, one-at-a-time pictures/s, build seconds) per batch size."""
    rows = []
    started = time.perf_counter()
    captioner = build(kind, args.tiny, dtype, device)
    built = time.perf_counter() - started
    count = args.tagger_pictures if kind == "wd14" else args.pictures
    images = pictures(max(count, max(sizes)), 64 if args.tiny else 448)
    if kind == "wd14":
        def batched(batch: list[Image.Image]) -> None:
            captioner.tag(batch)
        plain = rate(lambda b: [captioner.tag([i]) for i in b], images[: args.plain_pictures], 1)
    else:
        def batched(batch: list[Image.Image]) -> None:
            captioner.generate(batch, None, options)
        plain = rate(plain_loop(captioner, options), images[: args.plain_pictures], 1)
    for size in sizes:
        try:
            speed = rate(batched, images[: max(count, size)], size)
        except torch.OutOfMemoryError:
            speed = float("nan")
            torch.cuda.empty_cache()
        rows.append((captioner.source, captioner.device, size, speed, plain, built))
    print(f"{kind}: {rows[-len(sizes):]}", file=sys.stderr, flush=True)
    return rows


def build(kind: str, tiny: bool, dtype: torch.dtype, device: str):
    from lorastory.models.captioners.loader import load_captioner
    from lorastory.models.captioners.tiny import build_tiny_captioner
    from lorastory.models.captioners.wd14 import Wd14Tagger

    scratch = Path(tempfile.mkdtemp(prefix="caption-bench-"))
    if kind == "wd14":
        return Wd14Tagger(wd14_vit(scratch / "wd14", tiny), device)
    if tiny:
        return load_captioner(str(build_tiny_captioner({"blip2": "blip2"}.get(kind, kind), scratch / kind)), "cpu")
    return (real_blip2 if kind == "blip2" else real_qwen)(dtype, device)


if __name__ == "__main__":
    main()
