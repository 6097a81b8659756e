"""A derive step over a whole batch, as one generated Python function.

The batch engine called one native function (celnative.py) per derived metric and reading, and checked each
value around the call; with the cold-chain example that made the derive the engine's costliest step but the
window. Here the step is one function over the batch: per reading, the metrics copied, every derived metric's
translated expression inline, the finite-double check, the renames and the drops. Whatever is not the common
case leaves the generated code through one call, `slow(k, i, metrics, value)`: an expression the translation
does not cover, a reading on which the translated code raised (the library evaluates it, as celnative's
fallback does), or a value that is not a finite double (as_number converts or refuses it). So every value,
every error and their order are those of evaluating one metric after the other for one reading after the
other; the differential test holds the batch engine to the reference.

As in celnative, names and literals from the pipeline reach the generated code only as bound constants."""

from collections.abc import Callable
from typing import Any

from fleetflow.api.steps import DeriveStep
from fleetflow.processor.celnative import NATIVE_NAMES, translation
from fleetflow.processor.expressions import Expression
from fleetflow.runtime.codec import Reading

# slow(k, i, metrics, value): derived metric k of reading i, where `value` is what the translated code gave,
# or FAILED when it raised or does not exist
SlowPath = Callable[[int, int, dict[str, float], Any], None]
# (batch.metrics, alive, labels, device, readings, slow): replaces batch.metrics[i] for every i in alive
DeriveFunction = Callable[[list[dict[str, float]], list[int], dict[str, str], str, list[Reading], SlowPath], None]


class _Failed:
    """The translated code raised, or there is none: the library decides."""


FAILED = _Failed()


def derive_function(spec: DeriveStep, expressions: list[Expression], path: str) -> DeriveFunction:
    """The step `spec` (its metrics' `expressions`, in the spec's order) as one function over a batch."""
    namespace: dict[str, Any] = {**NATIVE_NAMES, "_dict": dict, "_FAILED": FAILED}
    body: list[str] = []
    reads_position = False
    for k, (name, expr) in enumerate(zip(spec.metrics, expressions, strict=True)):
        namespace[f"_k{k}"] = name
        translated = translation(expr, prefix=f"_c{k}_")
        if translated is None:
            body.append(f"slow({k}, i, m, _FAILED)")
            continue
        namespace.update(translated.constants)
        reads_position = reads_position or bool(translated.variables & {"t", "s"})
        body += [
            "try:",
            f"    _x = {translated.text}",
            "except Exception:",
            "    _x = _FAILED",
            "if _x.__class__ is _float and _x - _x == 0:",
            f"    m[_k{k}] = _x",
            "else:",
            f"    slow({k}, i, m, _x)",
        ]
    for j, (old, new) in enumerate(spec.rename.items()):
        namespace[f"_ro{j}"], namespace[f"_rn{j}"] = old, new
        body += [f"_x = m.pop(_ro{j}, None)", "if _x is not None:", f"    m[_rn{j}] = _x"]
    for j, name in enumerate(spec.drop):
        namespace[f"_d{j}"] = name
        body.append(f"m.pop(_d{j}, None)")
    position = ["r = rs[i]", "t = r.ts", "s = r.seq"] if reads_position else []
    # a copy: an earlier snapshot (a late reading) may hold the old dict
    lines = ["m = _dict(rows[i])", *position, *body, "rows[i] = m"]
    source = "def derive(rows, alive, l, d, rs, slow):\n    for i in alive:\n" + "".join(
        f"        {x}\n" for x in lines
    )
    exec(compile(source, f"<derive {path}>", "exec"), namespace)  # constants only, see the module docstring
    derive: DeriveFunction = namespace["derive"]
    return derive
