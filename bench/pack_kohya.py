"""Pack kohya sd-scripts and the packages it pins into one small archive that fits a GPU call's carry limit.

A device call carries at most 64 MiB, and the repository with our wheels already takes about 62 MB, so the
peer (``bench/peer_kohya.py``) travels as ``.peers/kohya.tar.xz``: ``sd-scripts/`` (a checkout, unchanged) and
``ksite/`` (diffusers 0.32, transformers 4.54, huggingface-hub 0.34 and kohya's small pins). To make it small:

- transformers keeps only the model folders that sd-scripts, diffusers and peft import by name (and what those
  import in turn); transformers loads model folders lazily, so the others are never touched;
- tokenizers keeps its ``dist-info`` (transformers checks the pinned version) but not its 9 MB binary: the GPU
  image's tokenizers is imported instead (sd-scripts' SDXL path uses the slow CLIP tokenizer, so only
  T5/Gemma fast tokenizers, which the SDXL run never builds, would touch it);
- wcwidth drops its optional C extension, and ``__pycache__`` folders go.

    python bench/pack_kohya.py --sd-scripts .peers/sd-scripts --site /path/ksite --out .peers/kohya.tar.xz
"""

from __future__ import annotations

import argparse
import lzma
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

# Model folders imported by name: sd-scripts (CLIP, T5, Gemma2, Qwen2), diffusers' loaders (encoder_decoder via
# AutoTokenizer), peft (Bloom), diffusers' pipelines (SigLIP); ``auto`` is the lazy registry itself.
ROOTS = ("auto", "clip", "t5", "gemma", "gemma2", "qwen2", "encoder_decoder", "bloom", "siglip")
RELATIVE_IMPORT = re.compile(r"from \.\.(\w+)(?:\.|\s)")


def kept_models(models: Path) -> set[str]:
    """``ROOTS`` and every model folder they import relatively (``from ..llama.modeling_llama import ...``)."""
    kept, todo = set(), [name for name in ROOTS if (models / name).is_dir()]
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        kept.add(name)
        for source in (models / name).glob("*.py"):
            for other in RELATIVE_IMPORT.findall(source.read_text(encoding="utf-8", errors="ignore")):
                if (models / other).is_dir() and other not in kept:
                    todo.append(other)
    return kept


def strip_site(site: Path) -> None:
    """Remove what the SDXL run never imports (see the module docstring), in place."""
    models = site / "transformers" / "models"
    keep = kept_models(models)
    for folder in models.iterdir():
        if folder.is_dir() and folder.name not in keep and folder.name != "__pycache__":
            shutil.rmtree(folder)
    shutil.rmtree(site / "tokenizers", ignore_errors=True)
    for extension in (site / "wcwidth").glob("_wcwidth_c*.so"):
        extension.unlink()
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd-scripts", type=Path, required=True, help="a checkout of kohya-ss/sd-scripts")
    parser.add_argument("--site", type=Path, required=True, help="folder with kohya's pinned packages (pip --target)")
    parser.add_argument("--out", type=Path, default=Path(".peers/kohya.tar.xz"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        shutil.copytree(args.site, stage / "ksite", symlinks=True)
        shutil.copytree(args.sd_scripts, stage / "sd-scripts", symlinks=True, ignore=shutil.ignore_patterns(".git"))
        strip_site(stage / "ksite")
        for cache in list((stage / "sd-scripts").rglob("__pycache__")):
            shutil.rmtree(cache, ignore_errors=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_name(args.out.name + ".partial")
        with lzma.open(partial, "wb", preset=9 | lzma.PRESET_EXTREME) as packed, tarfile.open(fileobj=packed, mode="w") as tar:
            tar.add(stage / "ksite", arcname="ksite")
            tar.add(stage / "sd-scripts", arcname="sd-scripts")
        partial.replace(args.out)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.2f} MB (kept transformers models: "
          f"{', '.join(sorted(kept_models(args.site / 'transformers' / 'models')))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
