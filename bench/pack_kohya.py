"""Pack kohya sd-scripts and the packages it pins into one small archive that fits a GPU call's carry limit.

A device call carries at most 64 MiB, and the repository with our wheels already takes about 62 MB, so the
peers (``bench/peer_kohya.py``: SDXL; ``bench/flux_peers.py``: Flux.1) travel as ``.peers/kohya.tar.xz``:
``sd-scripts/`` and ``ksite/`` (diffusers 0.32, transformers 4.54, huggingface-hub 0.34 and kohya's small pins).
The benchmarks expect it unpacked as ``/tmp/k`` (``--kohya /tmp/k/sd-scripts --kohya-site /tmp/k/ksite``, as
``bench/gpu_pending.sh`` does). To make it small:

- ``sd-scripts/`` keeps what the two LoRA trainers import: ``library/``, ``networks/``, ``train_network.py``,
  ``sdxl_train_network.py`` and ``flux_train_network.py`` (unchanged), and ``COMMIT`` (which checkout it is);
  the other trainers, docs and tests stay behind. The Flux trainer is on sd-scripts' main branch since the sd3
  branch was merged (PR #2268, 48d368fa); an older main has no ``flux_train_network.py`` and is refused;

- transformers keeps only the model folders that sd-scripts, diffusers and peft import by name (and what those
  import in turn); transformers loads model folders lazily, so the others are never touched;
- tokenizers keeps its ``dist-info`` (transformers checks the pinned version) but not its 9 MB binary: the GPU
  image's tokenizers is imported instead (sd-scripts' SDXL path uses the slow CLIP tokenizer, so only
  T5/Gemma fast tokenizers, which the SDXL run never builds, would touch it);
- wcwidth drops its optional C extension, and ``__pycache__`` folders go.

    python bench/pack_kohya.py --sd-scripts .peers/sd-scripts --site /path/ksite --out .peers/kohya.tar.xz

The Flux path needs no package beyond the SDXL one's: einops and sentencepiece come with the GPU image, and
transformers keeps its ``t5`` and ``clip`` folders (``ROOTS``).
"""

from __future__ import annotations

import argparse
import lzma
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

# Model folders imported by name: sd-scripts (CLIP, T5, Gemma2, Qwen2), diffusers' loaders (encoder_decoder via
# AutoTokenizer), peft (Bloom), diffusers' pipelines (SigLIP); ``auto`` is the lazy registry itself.
ROOTS = ("auto", "clip", "t5", "gemma", "gemma2", "qwen2", "encoder_decoder", "bloom", "siglip")
RELATIVE_IMPORT = re.compile(r"from \.\.(\w+)(?:\.|\s)")
# What the SDXL and Flux LoRA trainers import from an sd-scripts checkout (the rest is left behind).
SCRIPTS = ("train_network.py", "sdxl_train_network.py", "flux_train_network.py")
FOLDERS = ("library", "networks")


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


def copy_sd_scripts(checkout: Path, target: Path) -> None:
    """``SCRIPTS``, ``FOLDERS`` and ``COMMIT`` of ``checkout`` into ``target``; refuses a checkout without them."""
    missing = [name for name in (*SCRIPTS, *FOLDERS) if not (checkout / name).exists()]
    if missing:
        raise SystemExit(f"{checkout} has no {', '.join(missing)}: use kohya-ss/sd-scripts main at 48d368fa or newer")
    target.mkdir(parents=True)
    for name in SCRIPTS:
        shutil.copy2(checkout / name, target / name)
    for name in FOLDERS:
        shutil.copytree(checkout / name, target / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    if (checkout / "COMMIT").exists():
        shutil.copy2(checkout / "COMMIT", target / "COMMIT")
    elif (checkout / ".git").exists():
        head = subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
        (target / "COMMIT").write_text(head.stdout.strip() + " (kohya-ss/sd-scripts)\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sd-scripts", type=Path, required=True,
                        help="a checkout of kohya-ss/sd-scripts with the Flux trainer (main at 48d368fa or newer)")
    parser.add_argument("--site", type=Path, required=True, help="folder with kohya's pinned packages (pip --target)")
    parser.add_argument("--out", type=Path, default=Path(".peers/kohya.tar.xz"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        shutil.copytree(args.site, stage / "ksite", symlinks=True)
        copy_sd_scripts(args.sd_scripts, stage / "sd-scripts")
        strip_site(stage / "ksite")
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
