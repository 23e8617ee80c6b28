"""dvc.yaml's deps are derived, not trusted: every stage must list every local module its command
imports (transitively), so an edit to any of them makes `dvc status` report the stage changed."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "tasks" / "cli.py"


def lazy_exports(package_init: Path) -> dict[str, str]:
    """A package's PEP 562 table (`_EXPORTS = {name: submodule}`), empty when it has none."""
    for node in ast.parse(package_init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def local_imports(path: Path) -> set[Path]:
    """Files of model/, tasks/ and flows/ whose code `path` imports, directly or not."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        package = current.parent.relative_to(ROOT).parts
        tree = ast.parse(current.read_text(encoding="utf-8"))
        # The CLI imports a step only inside that step's handler: its own imports are the top-level ones.
        nodes = tree.body if current == CLI else ast.walk(tree)
        for node in nodes:
            names: list[tuple[str, ...]] = []
            if isinstance(node, ast.Import):
                names = [tuple(a.name.split(".")) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = tuple((node.module or "").split(".")) if node.module else ()
                if node.level:
                    base = package[: len(package) - node.level + 1] + base
                init = ROOT.joinpath(*base) / "__init__.py" if base else None
                lazy = lazy_exports(init) if init is not None and init.is_file() else {}
                names = [base] + [base + (lazy.get(a.name, a.name),) for a in node.names]
            for parts in names:
                if not parts or parts[0] not in ("model", "tasks", "flows"):
                    continue
                # `from model.config import X` depends on model/config.py; `from model import X` on model/__init__.py;
                # importing any module runs the __init__.py of every package above it
                packages = [ROOT.joinpath(*parts[:k]) / "__init__.py" for k in range(1, len(parts) + 1)]
                for candidate in [ROOT.joinpath(*parts).with_suffix(".py"), *packages]:
                    if candidate.is_file():
                        todo.append(candidate)
    return seen


def stage_modules(cmd: str) -> list[Path]:
    """`tinyveo <step> ...` -> the CLI, the params loader every command runs, and the step's module."""
    words = cmd.split()
    assert words[0] == "tinyveo", f"stages call `tinyveo <step>`: {cmd}"
    return [CLI, ROOT / "tasks" / "params.py", ROOT / "tasks" / f"{words[1].replace('-', '_')}.py"]


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


def test_every_stage_lists_every_module_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    missing = {}
    for name, stage in stages.items():
        needed = set().union(*(local_imports(m) for m in stage_modules(stage["cmd"])))
        lacking = sorted(str(p.relative_to(ROOT)) for p in needed if not covered(p, stage.get("deps", [])))
        if lacking:
            missing[name] = lacking
    assert not missing, f"dvc.yaml deps miss modules their stage imports: {missing}"


def test_the_derivation_sees_relative_and_package_imports():
    found = {str(p.relative_to(ROOT)) for p in local_imports(ROOT / "tasks" / "train_vae.py")}
    assert {"tasks/training.py", "tasks/checkpoint.py", "model/precision.py", "model/vae.py", "tasks/__init__.py"} <= found
    synth = {str(p.relative_to(ROOT)) for p in local_imports(ROOT / "tasks" / "synth.py")}
    assert "tasks/worlds/events.py" in synth and "model/denoiser.py" not in synth
    scored = {str(p.relative_to(ROOT)) for p in local_imports(ROOT / "tasks" / "evaluate.py")}
    assert {"tasks/score/__init__.py", "tasks/score/motion.py", "tasks/worlds/common.py"} <= scored
