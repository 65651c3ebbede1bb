"""CEL conditions over attestations, as Kubernetes users write them.

The implementation is Google's cel-cpp through `cel-expr-python` (the README's "CEL"
section compares it with the other Python CELs): expressions are parsed and
type-checked when the policy loads, so an undeclared variable, a syntax error or
`1 + 'a'` makes the policy unusable with the compiler's own message, as the
apiserver reports a bad ValidatingAdmissionPolicy expression. The environment
follows the apiserver's: the strings (v2), optional-types and bindings extensions,
and the literal checks Kubernetes 1.29 added (a constant duration, timestamp or
regular expression that could never evaluate is a compile error).

Variables: `statement` (the whole in-toto statement, as JSON), `predicate` (its
`predicate`) and `now` (a timestamp: when the admission is decided).
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping
from typing import Any, Final

from cel_expr_python import cel as _cel
from cel_expr_python.ext import ext_bindings, ext_optional, ext_strings

from imageward import errors

VARIABLES: Final = ("statement", "predicate", "now")


class CelError(errors.ImagewardError):
    """An expression that does not compile; `reason` is the compiler's message."""

    def __init__(self, expression: str, reason: str) -> None:
        self.expression = expression
        self.reason = reason
        super().__init__(f"CEL expression {expression!r} does not compile: {reason}")


_ENV: Any = None


def _env() -> Any:
    global _ENV
    if _ENV is None:
        _ENV = _cel.NewEnv(
            variables={
                "statement": _cel.Type.DYN,
                "predicate": _cel.Type.DYN,
                "now": _cel.Type.TIMESTAMP,
            },
            extensions=[
                ext_strings.ExtStrings(),
                ext_optional.ExtOptional(),
                ext_bindings.ExtBindings(),
            ],
        )
    return _ENV


def _clean(message: str) -> str:
    # cel-cpp wraps cel-go's text in a status ("INVALID_ARGUMENT: ... [INVALID_ARGUMENT]").
    text = message.strip()
    text = re.sub(r"^[A-Z_]+: ", "", text)
    text = re.sub(r"\s*\[[A-Z_]+\]$", "", text)
    return text


# Constant arguments of duration(), timestamp() and matches(): Kubernetes checks them
# when it compiles (cel.ValidateDurationLiterals and friends), cel-cpp only when it runs.
_LITERAL_CALLS: Final = re.compile(
    r"""(?P<call>\bduration|\btimestamp|\.matches)\(\s*(?P<literal>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\s*\)"""
)


def _check_literals(expression: str) -> None:
    for found in _LITERAL_CALLS.finditer(expression):
        call, literal = found.group("call"), found.group("literal")
        probe = f"''.matches({literal})" if call == ".matches" else f"{call}({literal})"
        try:
            value = _env().compile(probe).eval(data={})
        except Exception as e:
            raise CelError(expression, f"{call.lstrip('.')}({literal}): {_clean(str(e))}") from e
        if value.type() == _cel.Type.ERROR:
            what = "regular expression" if call == ".matches" else call.lstrip(".\\b")
            raise CelError(
                expression, f"invalid {what} literal {literal}: {_clean(str(value.value()))}"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class Program:
    """A compiled condition. `uses_now`: its answer may change with time alone."""

    expression: str
    compiled: Any = dataclasses.field(repr=False, compare=False)
    uses_now: bool = False


def compile_condition(expression: str) -> Program:
    """Parse and type-check once; raises CelError with the compiler's message."""
    try:
        compiled = _env().compile(expression)
    except Exception as e:  # cel-cpp raises RuntimeError carrying cel-go style text
        raise CelError(expression, _clean(str(e))) from None
    returned = compiled.return_type()
    if returned != _cel.Type.BOOL and returned != _cel.Type.DYN:
        raise CelError(expression, f"must evaluate to a bool, not {returned.name().lower()}")
    _check_literals(expression)
    return Program(expression, compiled, uses_now=re.search(r"\bnow\b", expression) is not None)


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """True or False, or why the condition could not be evaluated (`error`)."""

    value: bool | None
    error: str = ""


def evaluate(
    program: Program,
    statement: Mapping[str, Any],
    predicate: Any,
    now: datetime.datetime,
) -> Answer:
    """Evaluate over data a pusher controls: whatever goes wrong is an Answer, never raised."""
    try:
        value = program.compiled.eval(
            data={"statement": statement, "predicate": predicate, "now": now}
        )
        if value.type() == _cel.Type.ERROR:
            return Answer(None, _clean(str(value.value())))
        result = value.plain_value()
    except Exception as e:  # values CEL cannot hold (integers past int64, ...) among others
        return Answer(None, f"{type(e).__name__}: {_clean(str(e))}")
    if not isinstance(result, bool):
        return Answer(None, f"evaluated to {type(result).__name__} {result!r}, not a bool")
    return Answer(result)
