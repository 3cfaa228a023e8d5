"""``general_field_filter``: keep samples for which a condition on their fields holds.

The condition is Data-Juicer's small expression language, evaluated without
``eval``: field names (``meta.lang``, ``__dj__stats__.text_len`` for nested
values), constants, lists/tuples/sets, comparisons (chained too),
``and``/``or``/``not`` and unary minus. A missing field is ``None``, and any
comparison with ``None`` is false (``in``) or true (``not in``). Anything
else (calls, arithmetic, subscripts) is refused when the recipe is read;
Data-Juicer refuses it on the first row. The result is recorded as the
``general_field_filter_condition`` stat. An empty condition keeps everything.
"""

from __future__ import annotations

import ast
import operator
from typing import Any

from pydantic import field_validator

from lorastory.data.ops.base import Filter, OpParams, register_op
from lorastory.data.sample import STATS_FIELD, Sample
from lorastory.errors import DataError

STAT = "general_field_filter_condition"

_COMPARE = {
    ast.Gt: operator.gt, ast.Lt: operator.lt, ast.Eq: operator.eq, ast.NotEq: operator.ne,
    ast.GtE: operator.ge, ast.LtE: operator.le,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_ALLOWED = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.Compare, ast.Name, ast.Load, ast.Attribute,
    ast.Constant, ast.UnaryOp, ast.USub, ast.UAdd, ast.Not, ast.List, ast.Tuple, ast.Set, *_COMPARE,
)


def parse_condition(condition: str) -> ast.Expression:
    """The condition's syntax tree; a syntax error or an unsupported construct is a ``ValueError``."""
    try:
        tree = ast.parse(condition.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"invalid filter condition {condition!r} ({err.msg})") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ValueError(f"unsupported {type(node).__name__} in filter condition {condition!r}")
    return tree


class Evaluator(ast.NodeVisitor):
    """Data-Juicer's ``ExpressionTransformer`` over one row."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row

    def visit_BoolOp(self, node: ast.BoolOp) -> bool:
        values = (self.visit(child) for child in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)

    def visit_Compare(self, node: ast.Compare) -> bool:
        left = self.visit(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = self.visit(right_node)
            if left is None or right is None:
                return isinstance(op, ast.NotIn)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True

    def visit_Name(self, node: ast.Name) -> Any:
        return self.row.get(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        value = self.visit(node.value)
        if isinstance(value, dict):
            return value.get(node.attr)
        return getattr(value, node.attr, None) if not node.attr.startswith("_") else None

    def visit_Constant(self, node: ast.Constant) -> Any:
        return node.value

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return not value
        return -value if isinstance(node.op, ast.USub) else +value

    def visit_List(self, node: ast.List) -> list:
        return [self.visit(item) for item in node.elts]

    def visit_Tuple(self, node: ast.Tuple) -> tuple:
        return tuple(self.visit(item) for item in node.elts)

    def visit_Set(self, node: ast.Set) -> set:
        return {self.visit(item) for item in node.elts}


class GeneralFieldParams(OpParams):
    filter_condition: str = ""

    @field_validator("filter_condition")
    @classmethod
    def _parses(cls, value: str) -> str:
        if value.strip():
            parse_condition(value)
        return value


@register_op("general_field_filter")
class GeneralFieldFilter(Filter):
    Params = GeneralFieldParams
    stats_keys = (STAT,)
    per_image = False

    def __init__(self, params: GeneralFieldParams) -> None:
        super().__init__(params)
        self.tree = parse_condition(params.filter_condition) if params.filter_condition.strip() else None

    def drop_unusable_stats(self, stats: dict[str, Any]) -> None:
        return None  # the stat is whatever the condition evaluates to

    def compute_stats(self, sample: Sample) -> None:
        if self.tree is None or STAT in sample.stats:
            return
        try:
            value = Evaluator({**sample.row, STATS_FIELD: sample.stats}).visit(self.tree.body)
        except TypeError as err:  # e.g. comparing a string with a number
            raise DataError(f"filter condition: {err}") from None
        sample.stats[STAT] = list(value) if isinstance(value, set) else value  # a set cannot be written as JSON

    def keep(self, stats: dict[str, Any]) -> bool:
        return bool(stats.get(STAT, True))
