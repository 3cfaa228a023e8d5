"""Editing a recipe as the user wrote it: append an operator without losing the YAML's comments,
and say why a run kept nothing.

ruamel.yaml (a round-tripping parser) is not a dependency, so an operator is added by inserting
its text at the end of the ``process`` block; the result is parsed again and must equal the old
recipe plus the new operator, else the recipe is written out plainly (comments lost, said so).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from lorastory.config import yaml_from_text
from lorastory.data.ops import build_op
from lorastory.errors import ConfigError

_PROCESS_RE = re.compile(r"(?m)^process:[ \t]*(#.*)?$")
_ITEM_RE = re.compile(r"^([ \t]*)- ")


def _recipe(text: str) -> dict[str, Any]:
    data = yaml_from_text(text or "{}", "recipe") or {}
    if not isinstance(data, dict):
        raise ConfigError("the recipe must be a mapping of global keys and 'process'")
    return data


def _item_text(name: str, params: dict[str, Any], indent: str) -> str:
    body = yaml.safe_dump({name: params}, allow_unicode=True, sort_keys=False)
    lines = body.rstrip("\n").splitlines()
    first, rest = lines[0], lines[1:]
    return "\n".join([f"{indent}- {first}", *(f"{indent}  {line}" for line in rest)]) + "\n"


def insert_op(text: str, name: str, params: dict[str, Any]) -> str | None:
    """``text`` with ``- name: params`` at the end of its ``process`` list, every other line kept; None if the
    list is not a block list this can extend."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    match = _PROCESS_RE.search("".join(lines))
    if match is None:
        return "".join(lines) + "process:\n" + _item_text(name, params, "  ")
    start = "".join(lines).count("\n", 0, match.start()) + 1  # the first line after `process:`
    end, indent = start, None
    for index in range(start, len(lines)):
        line = lines[index]
        stripped = line.strip()
        item = _ITEM_RE.match(line)
        if item and indent is None:
            indent = item.group(1)
        if stripped and not line[0].isspace() and not stripped.startswith("#") and not item:
            break  # the next top-level key
        if stripped and not (not line[0].isspace() and stripped.startswith("#")):
            end = index + 1  # the last line of the block (a column-0 comment after it belongs to what follows)
    new = _item_text(name, params, indent if indent is not None else "  ")
    return "".join(lines[:end]) + new + "".join(lines[end:])


def add_op_keeping_comments(text: str, name: str, params_yaml: str) -> tuple[str, str]:
    """The recipe with the operator added (validated first) and a note ('' when the comments were kept)."""
    params = yaml_from_text(params_yaml or "{}", f"{name} parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{name} parameters must be a mapping of parameter: value")
    build_op(name, params, where=f"new {name}")  # a bad field is refused here, naming it
    data = _recipe(text)
    wanted = dict(data, process=list(data.get("process") or []) + [{name: params}])
    inserted = insert_op(text or "", name, params)
    if inserted is not None:
        try:
            check = _recipe(inserted)
        except ConfigError:
            check = None
        if check == wanted:
            return inserted, ""
    return (yaml.safe_dump(wanted, allow_unicode=True, sort_keys=False),
            "the recipe was rewritten (its comments are gone): its process list is not a plain YAML block list")


def nothing_kept_note(report: dict[str, Any]) -> str:
    """Why a recipe run kept no sample: the operator that dropped the last of them, with an example reason."""
    if report.get("samples_out") or not report.get("samples_in"):
        return ""
    ops = [row for row in report.get("ops", [])[1:] if row.get("dropped") or row.get("errors")]
    if not ops:
        return f"nothing kept: {report.get('skipped', 0)} row(s) were skipped before any operator (see below)"
    last = next((row for row in reversed(ops) if row.get("kept") == 0), ops[-1])
    whys = [e["why"] for e in report.get("dropped_examples", []) if e.get("op") == last["op"] and e.get("why")]
    reason = f" (e.g. {whys[0]})" if whys else ""
    return (f"nothing kept: {last['op']} dropped the last {last['in']} of {report['samples_in']}{reason}; "
            f"loosen its parameters or pick a recipe that fits your pictures (the toy recipe for the toy model)")
