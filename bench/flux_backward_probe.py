"""GPU probe: which op's backward raises the CUDA illegal memory access of Flux LoRA training (issue 23).

bench/flux_train.py (full-size random Flux.1 dev, 1024², rank 16, checkpointing, bf16) dies in its first
``loss.backward()``. This runs a list of cases, each in its own process (an illegal access kills the CUDA
context) with ``CUDA_LAUNCH_BLOCKING=1`` and autograd's anomaly mode (``check_nan=False``), so that the error
is raised by the faulting kernel's launch and names the backward node and the forward line it came from:

- ``full-lorastory``: the control, bench/_dit_train.py's bf16 path for one step (the known failure);
- ``rmsnorm-*``, ``layernorm``: torch.nn.RMSNorm / F.layer_norm forward and backward alone, at Flux's
  shapes, in the contiguous and strided layouts Flux hands them, eager and under autocast;
- ``sdpa-*``: SDPA backward at (1, 24, 4608, 128) bf16 pinned to one backend each;
- ``block-*``: one diffusers double / single block at full width, plain, with lorastory's LoRA, with LoRA
  and torch.utils.checkpoint (non-reentrant, as diffusers);
- ``full-decomposed-rmsnorm``, ``full-contiguous-grad``: the control with the q/k RMSNorms written out in
  float32, or receiving a contiguous gradient; ``full-plain(-ckpt)``: diffusers alone, no lorastory code.

Per case: ok / error type, its first line, the innermost diffusers/torch/lorastory/peft frames, the aten op
that raised with its tensors' shapes and strides (a dispatch mode, bench/_probe_trace.py), the anomaly report
("Error detected in <Node>" and its forward frames), the last "probe:" step printed, seconds, peak memory. One JSON (``--json``), rewritten after each case, and a table. ``--sanitizer`` reruns the cheapest
failing case under ``compute-sanitizer --tool memcheck`` when it is on PATH.

    PYTHONPATH=src python3 bench/flux_backward_probe.py --json $OUT/flux_probe.json     # <= ~5 min on an H200
    PYTHONPATH=src python3 bench/flux_backward_probe.py --cases rmsnorm-ops,full-lorastory --sanitizer
    PYTHONPATH=src python3 bench/flux_backward_probe.py --tiny                          # CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _probe_cases import CASES, GROUPS, run_case  # noqa: E402
from _probe_ops import Setting  # noqa: E402
from _probe_trace import OpTrace  # noqa: E402

from lorastory.fileio import atomic_write_json  # noqa: E402

FRAME_DIRS = ("diffusers", "torch", "lorastory", "peft", "bench")
SANITIZER_LINES = 40


@dataclass
class Report:
    """The JSON being written: rewritten whole after every case so that a cut-off run keeps what it has."""

    path: str | None
    data: dict[str, Any]

    def save(self) -> None:
        if self.path:
            atomic_write_json(self.path, self.data)


def short_frame(frame: traceback.FrameSummary) -> str | None:
    """``pkg/.../file.py:line function`` for a frame in one of FRAME_DIRS, else None."""
    parts = Path(frame.filename).parts
    for i, part in enumerate(parts):
        if part in FRAME_DIRS:
            return f"{'/'.join(parts[i:])}:{frame.lineno} {frame.name}"
    return None


def innermost_frames(tb: Any, keep: int = 8) -> list[str]:
    """The innermost ``keep`` library frames, and the innermost frame of all wherever it is."""
    summary = traceback.extract_tb(tb)
    frames = [short for frame in summary if (short := short_frame(frame))][-keep:]
    last = summary[-1] if summary else None
    if last is not None and short_frame(last) is None:
        frames.append(f"{last.filename}:{last.lineno} {last.name}")
    return frames


def anomaly_report(text: str, keep: int = 10) -> dict[str, Any] | None:
    """The node anomaly mode names and the innermost library lines of the forward call that made it."""
    match = re.search(r"Error detected in (\S+)\.", text)
    if not match:
        return None
    tail = text[match.end():]
    frames = [f"{m.group(1)}:{m.group(2)} {m.group(3)}" for m in re.finditer(r'File "([^"]+)", line (\d+), in (\S+)', tail)]
    frames = [f for f in frames if any(f"/{d}/" in f for d in FRAME_DIRS)]
    return {"node": match.group(1), "forward_frames": [re.sub(r"^.*?/(?=(?:%s)/)" % "|".join(FRAME_DIRS), "", f)
                                                        for f in frames[-keep:]]}


def peak_gb() -> float | None:
    import torch

    try:
        if torch.cuda.is_available():
            return round(torch.cuda.max_memory_allocated() / 2**30, 2)
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # CPU: the process's max RSS
    except Exception:  # a lost CUDA context may refuse even this
        return None


def child(name: str, out: str, setting: Setting, anomaly: bool, op_trace: bool) -> int:
    """Run one case in this process and write its result to ``out``."""
    import torch

    started = time.perf_counter()
    result: dict[str, Any] = {"case": name}
    trace = OpTrace() if op_trace else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autograd.set_detect_anomaly(anomaly, check_nan=False), trace or contextlib.nullcontext():
                result["result"] = run_case(name, setting)
            result["status"] = "skipped" if "skipped" in result["result"] else "ok"
        except BaseException as err:  # the point is to record it
            message = str(err).strip()
            result.update(status="cuda-error" if "CUDA error" in message else "error", error_type=type(err).__name__,
                          error=message.splitlines()[0] if message else "", frames=innermost_frames(err.__traceback__),
                          **(trace.report() if trace else {}))
            traceback.print_exc()
    report = anomaly_report("\n".join(str(w.message) for w in caught))
    if report:
        result["anomaly"] = report
    result.update(seconds=round(time.perf_counter() - started, 1), peak_gb=peak_gb())
    atomic_write_json(out, result)
    return 0 if result["status"] in ("ok", "skipped") else 1


def child_command(name: str, out: str, args: argparse.Namespace) -> list[str]:
    flags = [f for f, on in (("--tiny", args.tiny), ("--autocast", args.autocast), ("--no-anomaly", not args.anomaly),
                             ("--no-op-trace", not args.op_trace)) if on]
    return [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-out", out, *flags]


def child_env() -> dict[str, str]:
    return {**os.environ, "CUDA_LAUNCH_BLOCKING": "1", "PYTHONUNBUFFERED": "1"}


def launch(command: list[str], timeout: float, env: dict[str, str]) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, stdout and stderr together, seconds)."""
    started = time.perf_counter()
    # its own process group: a timeout ends compute-sanitizer's target process too, not the sanitizer alone
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
        rc: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        rc = None
    return rc, out.decode(errors="replace"), time.perf_counter() - started


def run_isolated(name: str, timeout: float, args: argparse.Namespace) -> dict[str, Any]:
    """One case in a child process; what the child wrote, or what its exit and output say when it wrote nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        rc, text, seconds = launch(child_command(name, out, args), timeout, child_env())
        result = json.loads(Path(out).read_text()) if Path(out).exists() else {
            "case": name, "status": "timeout" if rc is None else "crashed", "error": f"exit code {rc}" if rc is not None else
            f"no result within {timeout:.0f} s"}
    steps = [line for line in text.splitlines() if line.startswith("probe: ")]
    if steps:
        result["last_step"] = steps[-1][len("probe: "):]
    if result["status"] not in ("ok", "skipped"):
        result.setdefault("anomaly", anomaly_report(text))
        result["output_tail"] = [line for line in text.splitlines() if line.strip()][-20:]
    result.update(wall_s=round(seconds, 1), exit_code=rc)
    return result


def expand(names: str) -> list[str]:
    """Case names, a group name standing for its cases, in the order given; unknown names are refused."""
    chosen: list[str] = []
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in CASES and name not in GROUPS:
            raise SystemExit(f"error: unknown case {name!r}; the cases: {', '.join(CASES)}; groups: {', '.join(GROUPS)}")
        chosen += [n for n in GROUPS.get(name, [name]) if n not in chosen]
    return chosen


def sanitizer_path() -> str | None:
    found = shutil.which("compute-sanitizer")
    fallback = Path("/usr/local/cuda/bin/compute-sanitizer")
    return found or (str(fallback) if fallback.exists() else None)


def environment() -> dict[str, Any]:
    import diffusers
    import torch

    cuda = torch.backends.cuda
    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                            "diffusers": diffusers.__version__, "compute_sanitizer": sanitizer_path(),
                            "sdpa_enabled": {"flash": cuda.flash_sdp_enabled(), "efficient": cuda.mem_efficient_sdp_enabled(),
                                             "cudnn": cuda.cudnn_sdp_enabled(), "math": cuda.math_sdp_enabled()}}
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    return info


def sanitize(results: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """The cheapest failing case again under compute-sanitizer memcheck: its first report lines."""
    tool = sanitizer_path()
    failed = [r["case"] for r in results if r["status"] in ("cuda-error", "crashed")]  # not a refused backend or OOM
    if not tool or not failed:
        return {"ran": False, "why": "compute-sanitizer is not on PATH" if not tool else "no case hit a CUDA error"}
    name = min(failed, key=lambda n: CASES[n].cost)
    need = 300 if name.startswith("full-") else 20  # memcheck on the 12 B model: minutes (each kernel instrumented)
    if seconds < need:
        return {"ran": False, "case": name, "why": f"{seconds:.0f} s left, {name} needs ~{need} s under memcheck: run "
                f"bench/flux_backward_probe.py --cases {name} --sanitizer --budget {need + 60}"}
    with tempfile.TemporaryDirectory() as tmp:
        command = [tool, "--tool", "memcheck", "--print-limit", "10", *child_command(name, str(Path(tmp) / "r.json"), args)]
        env = {**child_env(), "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # each tensor its own allocation: exact bounds
        rc, text, wall = launch(command, seconds, env)
    lines = [line for line in text.splitlines() if line.startswith("=========")] or text.splitlines()
    return {"ran": True, "case": name, "exit_code": rc, "wall_s": round(wall, 1), "report": lines[:SANITIZER_LINES]}


def table_line(r: dict[str, Any]) -> str:
    what = r.get("error_type", "") + (": " + r["error"][:70] if r.get("error") else "")
    if r.get("anomaly"):
        what += f" [{r['anomaly']['node']}]"
    if r.get("failing_op"):
        what += f" op {r['failing_op'].split('(')[0]}"
    if r["status"] == "skipped":
        what = str(r.get("result", {}).get("skipped", r.get("why", "")))
    return f"{r['case']:<26} {r['status']:<10} {r.get('wall_s', 0):>6} {r.get('peak_gb') or 0:>7}  {what}"


def plan(names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = [{"case": n, "timeout_s": CASES[n].timeout, "expected_s": CASES[n].expected} for n in names]
    print(f"planned ({'tiny, CPU' if args.tiny else 'full size, CUDA'}; budget {args.budget} s):")
    for row in rows:
        print(f"  {row['case']:<26} ~{row['expected_s']:>3} s, timeout {row['timeout_s']} s  {CASES[row['case']].about}")
    print(f"  expected in all ~{sum(r['expected_s'] for r in rows)} s", flush=True)
    return rows


def run_all(args: argparse.Namespace, clock: Callable[[], float] = time.perf_counter) -> int:
    started = clock()
    names = expand(args.cases)
    report = Report(args.json, {"environment": environment(), "settings": vars(args), "plan": plan(names, args), "cases": []})
    report.save()
    reserve = args.sanitizer_s if args.sanitizer and sanitizer_path() else 0.0  # kept back for the memcheck rerun
    for name in names:
        left = args.budget - reserve - (clock() - started)
        if left < 10:
            result = {"case": name, "status": "skipped", "why": f"the {args.budget} s budget is spent"}
        else:
            result = run_isolated(name, min(CASES[name].timeout * (3 if args.tiny else 1), left), args)
        report.data["cases"].append(result)
        report.save()
        print(table_line(result), flush=True)
    if args.sanitizer:
        report.data["sanitizer"] = sanitize(report.data["cases"], args, max(10.0, args.budget - (clock() - started)))
        print("sanitizer:", *report.data["sanitizer"].get("report", [report.data["sanitizer"].get("why")]), sep="\n  ")
    report.data["seconds_total"] = round(clock() - started, 1)
    report.save()
    print(f"{'case':<26} {'status':<10} {'wall_s':>6} {'peak_gb':>7}  error [anomaly node]")
    for r in report.data["cases"]:
        print(table_line(r))
    return 0 if all(r["status"] in ("ok", "skipped") for r in report.data["cases"]) else 1


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="all", help=f"comma-separated cases or groups (groups: {', '.join(GROUPS)})")
    parser.add_argument("--json", default=None)
    parser.add_argument("--tiny", action="store_true", help="every case on the CPU at the tiny config: a smoke test")
    parser.add_argument("--autocast", action="store_true", help="run the cases under torch.autocast bf16 (the diffusers "
                        "example's path) instead of lorastory train's (the rmsnorm-autocast case always does)")
    parser.add_argument("--no-anomaly", dest="anomaly", action="store_false", help="without autograd's anomaly mode")
    parser.add_argument("--no-op-trace", dest="op_trace", action="store_false",
                        help="without the dispatch mode that names the aten op that raised (bench/_probe_trace.py)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for the whole run; later cases are skipped")
    parser.add_argument("--sanitizer", action="store_true", help="rerun the cheapest failing case under compute-sanitizer")
    parser.add_argument("--sanitizer-s", type=float, default=0.0,
                        help="seconds of --budget kept back from the cases for the sanitizer's rerun (when it is found)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return parser


def main() -> int:
    args = argument_parser().parse_args()
    if args.child:
        return child(args.child, args.child_out, Setting(tiny=args.tiny, autocast=args.autocast), args.anomaly, args.op_trace)
    return run_all(args)


if __name__ == "__main__":
    raise SystemExit(main())
