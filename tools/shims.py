"""Generate the by-path shims at the repository root (``tasks/``, ``scorers/``, ``solvers/``) from
the package's own ``@task`` / ``@scorer`` / ``@solver`` definitions, so they cannot drift.

A shim lets a checkout run ``inspect eval tasks/em_freeform.py`` or ``inspect score LOG --scorer
scorers/judge.py``: Inspect finds tasks in a file by its decorators, so the shim restates the
signature (copied from the package source, annotation and default text as written) and calls the
package's function with every argument.

    python tools/shims.py          # rewrite the shims
    python tools/shims.py --check  # exit 1, naming the stale files, when a shim differs (make lint)
"""

from __future__ import annotations

import argparse
import ast
import builtins
import importlib
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src"


@dataclass(frozen=True)
class Shim:
    path: str  # shim file, relative to the repository root
    module: str  # package module that defines the object
    name: str  # the object's name (and registry name, inspect_em/<name>)
    usage: str  # how the shim is used, for its docstring


SHIMS = (
    Shim("tasks/em_freeform.py", "inspect_em.tasks.em_freeform", "em_freeform",
         "inspect eval tasks/em_freeform.py --model hf/SmolLM2-135M-Instruct \\\n"
         "        -M model_path=$(inspect-em model path) -T variants=plain -T samples_per_question=2"),
    Shim("tasks/refusal_contrast.py", "inspect_em.tasks.refusal_contrast", "refusal_contrast",
         "inspect eval tasks/refusal_contrast.py --model hf/SmolLM2-135M-Instruct \\\n"
         "        -M model_path=$(inspect-em model path)"),
    Shim("scorers/code_mode.py", "inspect_em.scorers.code_mode", "code_mode",
         "inspect score LOG.eval --scorer scorers/code_mode.py"),
    Shim("scorers/judge.py", "inspect_em.scorers.judge.scorer", "em_judge",
         "inspect score LOG.eval --scorer scorers/judge.py --model-role grader=openai/gpt-4o"),
    Shim("scorers/numbers.py", "inspect_em.scorers.numbers", "loaded_numbers",
         "inspect score LOG.eval --scorer scorers/numbers.py"),
    Shim("scorers/projection.py", "inspect_em.scorers.projection", "trait_projection",
         "inspect score LOG.eval --scorer scorers/projection.py \\\n"
         "        -S vectors=vectors/SmolLM2-135M-Instruct/code -S probe_model=embedded"),
    Shim("scorers/refusal.py", "inspect_em.scorers.refusal", "refusal",
         "inspect score LOG.eval --scorer scorers/refusal.py"),
    Shim("solvers/steer.py", "inspect_em.solvers.steer", "steer",
         "inspect eval tasks/em_freeform.py --model hf/<model> --solver solvers/steer.py \\\n"
         "        -S vectors=vectors/SmolLM2-135M-Instruct/code -S alpha=4"),
)

# decorator name -> (import line, return type)
KINDS = {
    "task": ("from inspect_ai import Task, task", "Task"),
    "scorer": ("from inspect_ai.scorer import Scorer, scorer", "Scorer"),
    "solver": ("from inspect_ai.solver import Solver, solver", "Solver"),
}


def _definition(module_name: str, name: str) -> tuple[str, ast.FunctionDef]:
    path = PACKAGE / Path(*module_name.split(".")).with_suffix(".py")
    source = path.read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return source, node
    raise SystemExit(f"{module_name} defines no function {name}")


def _text(source: str, node: ast.AST) -> str:
    text = ast.get_source_segment(source, node)
    if text is None:
        raise SystemExit(f"no source text for {ast.dump(node)}")
    return text


def _names(nodes: list[ast.expr]) -> set[str]:
    """Global names an annotation/default/decorator expression uses (imported from the package module)."""
    found = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and not hasattr(builtins, sub.id):
                found.add(sub.id)
    return found


def render(shim: Shim) -> str:
    """The shim file's text, from the package definition."""
    source, fn = _definition(shim.module, shim.name)
    decorator = next((d for d in fn.decorator_list
                      if (d.func.id if isinstance(d, ast.Call) and isinstance(d.func, ast.Name)
                          else getattr(d, "id", None)) in KINDS), None)
    if decorator is None:
        raise SystemExit(f"{shim.module}.{shim.name} has no @task/@scorer/@solver decorator")
    kind = _text(source, decorator.func if isinstance(decorator, ast.Call) else decorator)
    args = fn.args
    if args.vararg or args.kwarg or args.kwonlyargs or args.posonlyargs:
        raise SystemExit(f"{shim.module}.{shim.name}: shims support plain keyword arguments only")
    defaults: list[ast.expr | None] = [None] * (len(args.args) - len(args.defaults)) + list(args.defaults)
    params, used = [], []
    for arg, default in zip(args.args, defaults, strict=True):
        text = arg.arg
        if arg.annotation is not None:
            text += ": " + _text(source, arg.annotation)
            used.append(arg.annotation)
        if default is not None:
            text += (" = " if arg.annotation is not None else "=") + _text(source, default)
            used.append(default)
        params.append(text)
    decorator_text = "@" + _text(source, decorator)
    if isinstance(decorator, ast.Call):
        used.extend([*decorator.args, *(k.value for k in decorator.keywords)])
    # ruff's isort order: CONSTANTS, then Classes, then functions
    imports = sorted(_names(used) - {"Task", "Scorer", "Solver"},
                     key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    summary = " ".join((ast.get_docstring(fn) or "").split("\n\n")[0].split())
    docstring = "\n    ".join(textwrap.wrap(summary, 110))
    import_line, returns = KINDS[kind]
    call = "".join(f"\n        {a.arg}={a.arg}," for a in args.args) + ("\n    " if args.args else "")
    signature = ",\n".join(f"    {p}" for p in params)
    lines = [
        f'"""``inspect_em/{shim.name}`` by path, in a checkout (installed, use the registry name):',
        "",
        "    " + shim.usage.replace("\\", "\\\\"),
        "",
        f"Generated by tools/shims.py from ``{shim.module}.{shim.name}``: edit the package, then run",
        "``python tools/shims.py``.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        import_line,
        "",
        *([f"from {shim.module} import {', '.join(imports)}"] if imports else []),
        f"from {shim.module} import {shim.name} as _{shim.name}",
        "",
        "",
        decorator_text,
        f"def {shim.name}(" + (f"\n{signature},\n" if params else "") + f") -> {returns}:",
        f'    """{docstring}"""',
        f"    return _{shim.name}({call})",
        "",
    ]
    return "\n".join(lines)


def stale() -> list[str]:
    """Shim files whose text differs from what the package generates."""
    out = []
    for shim in SHIMS:
        path = ROOT / shim.path
        if not path.exists() or path.read_text(encoding="utf-8") != render(shim):
            out.append(shim.path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a shim is stale; write nothing")
    ns = parser.parse_args(argv)
    if ns.check:
        bad = stale()
        if bad:
            print(f"stale shims (run `python tools/shims.py`): {', '.join(bad)}", file=sys.stderr)
            return 1
        return 0
    for shim in SHIMS:
        path = ROOT / shim.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(shim), encoding="utf-8")
    importlib.invalidate_caches()
    print(f"wrote {len(SHIMS)} shims")
    return 0


if __name__ == "__main__":
    sys.exit(main())
