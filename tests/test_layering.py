"""Imports flow one way (docs/architecture.md): a module importing across the lines fails
here, and the product never imports test tooling."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("blobstore", "indexer", "fusefs", "restorer", "placement", "thaw")


def fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter started from the repository."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()


def rules() -> dict[str, set[str]]:
    """The import rules as ``docs/architecture.md`` states them: the block after its
    ``<!-- import rules -->`` marker, a line ``UNIT -> UNIT UNIT ...`` each."""
    text = (REPO / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- import rules -->\s*```text\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no import rules block"
    out = {}
    for line in block.group(1).splitlines():
        line = line.split("#")[0].strip()
        if line:
            unit, _, allowed = line.partition("->")
            out[unit.strip()] = set(allowed.split())
    return out


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    return {module_name(f): f for pkg in PACKAGES for f in sorted((REPO / pkg).rglob("*.py"))}


def imported(path: Path, modules: dict[str, Path]) -> set[str]:
    """The product modules ``path`` imports, lazy imports inside functions included, each
    resolved to the module (``from pkg import name`` to ``pkg.name`` where that is one)."""
    me, out = module_name(path), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
                up = up[:len(up) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me:
                out.add(name)
    return out


def unit_of(module: str, units) -> str | None:
    """The rule that governs ``module``: its package's ``*.cli`` rule for a command-line
    module, else the longest unit that names it."""
    if module.endswith(".cli") and "*.cli" in units:
        return "*.cli"
    named = [u for u in units if u != "*.cli" and (module == u or module.startswith(u + "."))]
    return max(named, key=len) if named else None


def allows(unit: str, allowed: set[str], target: str, module: str) -> bool:
    """A unit may import itself and the units it lists (and what lies inside them); a
    command-line module, its own package too."""
    if "*" in allowed:
        return True
    own = module.split(".")[0] if unit == "*.cli" else unit
    return any(target == u or target.startswith(u + ".") for u in (own, *allowed))


def test_imports_follow_the_rules_the_architecture_page_states():
    units, modules = rules(), product_modules()
    bad = []
    for name, path in modules.items():
        unit = unit_of(name, units)
        if unit is None:
            bad.append(f"{name}: no rule names it")
            continue
        bad += [f"{name} imports {t} ({unit} -> {' '.join(sorted(units[unit]))})"
                for t in sorted(imported(path, modules))
                if not allows(unit, units[unit], t, name)]
    assert bad == []


def test_every_unit_the_rules_name_exists_and_nothing_imports_the_command_line():
    units, modules = rules(), product_modules()
    named = {a for allowed in units.values() for a in allowed} | set(units)
    missing = [u for u in named - {"*", "*.cli"} if u not in modules]
    assert missing == []
    assert units["thaw"] == {"*"} and all("thaw" not in a for u, a in units.items()
                                         if u != "thaw")


def test_no_import_cycle_between_the_products_modules():
    """Lazy imports included: a cycle that a function-level import hides is still one."""
    modules = product_modules()
    graph = {m: imported(p, modules) for m, p in modules.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package's __init__ re-exporting what its own modules define is no cycle
            if len(comp) > 1 and not any(modules[c].name == "__init__.py" for c in comp):
                cycles.append(sorted(comp))

    for m in graph:
        if m not in index:
            visit(m)
    assert cycles == []


def test_no_module_of_the_write_path_imports_the_garbage_collector():
    """Writing an image (push, snapshot) reads the collector's record through the fence,
    never the collector: ``lifecycle.gcrecord`` holds the format both use."""
    modules = product_modules()
    graph = {m: imported(p, modules) for m, p in modules.items()}
    for start in ("blobstore.image.writer", "indexer.push", "restorer.writer",
                  "restorer.snapshots"):
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        assert "blobstore.ops.gc" not in seen, start


def test_importing_the_product_imports_no_test_tooling():
    code = ("import sys, blobstore, indexer, fusefs, restorer, placement, thaw.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pytest', '_pytest', 'tests', 'hypothesis')))")
    out = fresh_python(code)
    assert out == "[]"


def test_no_product_module_launches_seaweedfs():
    launchers = [f"{f.relative_to(REPO)}" for pkg in PACKAGES
                 for f in (REPO / pkg).rglob("*.py")
                 if "weed" in f.read_text() and "mini" in f.read_text()]
    assert launchers == []


def test_gpu_probing_has_one_home_that_imports_no_torch():
    code = "import sys, restorer.gpus; print('torch' in sys.modules)"
    out = fresh_python(code)
    assert out == "False"
    users = [f"{f.relative_to(REPO)}" for pkg in PACKAGES
             for f in (REPO / pkg).rglob("*.py")
             if "import pynvml" in f.read_text() and f.name != "gpus.py"]
    assert users == []


def test_readme_and_docs_name_no_path_outside_the_repository():
    import re

    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    outside = [f"{p.name}: {m.group(0)}" for p in texts
               for m in re.finditer(r"\.\./[\w./-]*|\bshared/\w+", p.read_text())]
    assert outside == []


def test_the_command_line_imports_no_heavy_library_until_a_command_needs_it():
    """Every `thaw` command (a mount above all) starts in the interpreter's time plus ours:
    scipy (~0.6 s), boto3 (~0.3 s), aiohttp and torch load only in the commands using them."""
    code = ("import sys, thaw.main; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'scipy', 'numpy', 'boto3', 'botocore', 'aiohttp', 'torch', 'pyfuse3', 'trio'}))")
    out = fresh_python(code)
    assert out == "[]"


def test_a_mount_imports_no_other_commands_code():
    """A mount's start pays for its own command only: no source readers, chunker, placement
    or restorer (~15 ms of every start when every command's parser was built)."""
    code = ("import sys, thaw.main; thaw.main.build_parser('mount'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('indexer', 'placement', 'restorer', 'pyfastcdc', 'tarfile')))")
    out = fresh_python(code)
    assert out == "[]"


def test_a_mount_imports_no_metrics_library_unless_asked_for_metrics():
    """prometheus_client takes 60-300 ms to import; a mount without --metrics skips it."""
    code = ("import sys, fusefs.service, fusefs.cli, blobstore.store.peers; "
            "print('prometheus_client' in sys.modules)")
    out = fresh_python(code)
    assert out == "False"


def test_the_warm_up_list_names_what_a_mount_imports_and_leaves_no_thread(tmp_path):
    """`python -m thaw.warmup` lists the files a mount imports (pyfuse3's extension, trio's
    bytecode); reading ahead a list with a vanished file is quiet, and ``wait`` leaves no
    thread behind for a background mount's fork."""
    import subprocess
    import sys

    listing = tmp_path / "files.txt"
    code = f"from thaw import warmup; print(warmup.record({str(listing)!r}))"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
    files = listing.read_text().split()
    assert any("pyfuse3" in f and f.endswith(".so") for f in files)
    assert any("/trio/" in f and f.endswith(".pyc") for f in files)
    assert any("/fusefs/__pycache__/cli." in f for f in files)  # not thaw.main's import now
    assert all(Path(f).is_file() for f in files)
    listing.write_text("\n".join([str(tmp_path / "gone.pyc"), *files[:20]]) + "\n")
    code = ("import threading; from thaw import warmup; "
            f"warmup.start({str(listing)!r}); warmup.wait(); "
            "print(threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True)
    assert out.stdout.strip() == "1" and out.stderr == ""
