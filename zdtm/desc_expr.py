"""Read a descriptor written as a Python expression, without eval().

CRIU's zdtm runner reads NAME.desc with eval(), so a few descriptors of that dialect are
Python expressions rather than plain literals (string concatenation, ``' '.join([...])``,
``%`` formatting, a call of ``dict``/``str``).  This module evaluates exactly that subset
over the parsed syntax tree: literals, containers, ``+`` and ``%`` on literals, and a short
list of pure calls.  Anything else (names, attributes other than the listed string methods,
lambdas, comprehensions, any other call) is refused with the line and column of the
construct, so the caller can report it for that one test.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import Any

#: Pure builtins a descriptor may call.
CALLS: dict[str, Callable[..., Any]] = {
    "dict": dict, "list": list, "tuple": tuple, "str": str, "int": int, "sorted": sorted,
}
#: String methods a descriptor may call on a string value.
STR_METHODS = frozenset({"join", "format", "split", "strip", "replace", "upper", "lower"})


class ExprError(ValueError):
    """The text is not a descriptor expression this evaluator reads."""

    def __init__(self, line: int, col: int, problem: str) -> None:
        super().__init__(f"line {line}, column {col + 1}: {problem}")
        self.line = line
        self.col = col
        self.problem = problem


def evaluate(text: str) -> Any:
    """The value of descriptor ``text``; SyntaxError if it is not Python at all.

    Raises ExprError for a construct outside the allowed subset.
    """
    tree = ast.parse(text.strip() or "None", mode="eval")
    return _Evaluator().visit(tree.body)


def _refuse(node: ast.AST, what: str) -> ExprError:
    return ExprError(getattr(node, "lineno", 1), getattr(node, "col_offset", 0),
                     f"{what} is not allowed in a descriptor (only literals, + and %, "
                     f"calls of {', '.join(sorted(CALLS))} and str.{{"
                     f"{','.join(sorted(STR_METHODS))}}})")


class _Evaluator(ast.NodeVisitor):
    """Walks an expression tree, computing values of the allowed node types only."""

    def generic_visit(self, node: ast.AST) -> Any:
        raise _refuse(node, _describe(node))

    def visit_Constant(self, node: ast.Constant) -> Any:
        return node.value

    def visit_Dict(self, node: ast.Dict) -> Any:
        out = {}
        for key, value in zip(node.keys, node.values):
            if key is None:
                raise _refuse(node, "'**' unpacking")
            out[self.visit(key)] = self.visit(value)
        return out

    def visit_List(self, node: ast.List) -> Any:
        return [self.visit(e) for e in node.elts]

    def visit_Tuple(self, node: ast.Tuple) -> Any:
        return tuple(self.visit(e) for e in node.elts)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.visit(node.operand)
        if isinstance(node.op, ast.USub) and isinstance(value, int | float):
            return -value
        raise _refuse(node, "this unary operator")

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        left, right = self.visit(node.left), self.visit(node.right)
        try:
            if isinstance(node.op, ast.Add) and type(left) is type(right):
                return left + right
            if isinstance(node.op, ast.Mod) and isinstance(left, str):
                return left % right
        except (TypeError, ValueError) as exc:
            raise ExprError(node.lineno, node.col_offset, f"cannot compute: {exc}") from None
        raise _refuse(node, f"operator {type(node.op).__name__} on "
                            f"{type(left).__name__} and {type(right).__name__}")

    def visit_Call(self, node: ast.Call) -> Any:
        func = self._callable(node)
        args = [self.visit(a) for a in node.args]
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise _refuse(node, "'**' unpacking")
            kwargs[kw.arg] = self.visit(kw.value)
        try:
            return func(*args, **kwargs)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise ExprError(node.lineno, node.col_offset, f"cannot compute: {exc}") from None

    def _callable(self, node: ast.Call) -> Callable[..., Any]:
        f = node.func
        if isinstance(f, ast.Name) and f.id in CALLS:
            return CALLS[f.id]
        if isinstance(f, ast.Attribute) and f.attr in STR_METHODS:
            receiver = self.visit(f.value)
            if isinstance(receiver, str):
                method: Callable[..., Any] = getattr(receiver, f.attr)
                return method
            raise _refuse(node, f"method {f.attr}() on {type(receiver).__name__}")
        raise _refuse(node, f"call of {ast.unparse(f)}()")


def _describe(node: ast.AST) -> str:
    """A short human name of a refused construct, with its text."""
    if isinstance(node, ast.Lambda):
        return "lambda"
    kind = "name" if isinstance(node, ast.Name) else type(node).__name__.lower()
    text = ast.unparse(node)
    return f"{kind} {text[:40] + '...' if len(text) > 40 else text!r}"
