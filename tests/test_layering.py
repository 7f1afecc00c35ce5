"""Imports flow one way (docs/architecture.md): a module importing across the lines fails
here, and the product never imports test tooling."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OURS = {"blobstore", "indexer", "fusefs", "restorer", "placement", "thaw"}
ALLOWED = {"blobstore": set(), "placement": set(), "indexer": {"blobstore"},
           "fusefs": {"blobstore"}, "restorer": {"blobstore"}}


def fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter started from the repository."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip()


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_no_import_crosses_the_lines():
    bad = []
    for pkg, allowed in ALLOWED.items():
        for f in (REPO / pkg).rglob("*.py") if (REPO / pkg).exists() else ():
            if f.name == "cli.py":
                allowed_here = OURS - {"thaw"}  # command-line glue may reach across
            else:
                allowed_here = allowed | {pkg}
            bad += [f"{f.relative_to(REPO)} imports {m}" for m in imports(f)
                    if m in OURS and m not in allowed_here]
    assert bad == []


def test_nothing_imports_the_command_line():
    users = [f"{f.relative_to(REPO)}" for pkg in ALLOWED if (REPO / pkg).exists()
             for f in (REPO / pkg).rglob("*.py") if "thaw" in set(imports(f))]
    assert users == []


def test_importing_the_product_imports_no_test_tooling():
    code = ("import sys, blobstore, indexer, fusefs, restorer, placement, thaw.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pytest', '_pytest', 'tests', 'hypothesis')))")
    out = fresh_python(code)
    assert out == "[]"


def test_no_product_module_launches_seaweedfs():
    launchers = [f"{f.relative_to(REPO)}" for pkg in OURS if (REPO / pkg).exists()
                 for f in (REPO / pkg).rglob("*.py")
                 if "weed" in f.read_text() and "mini" in f.read_text()]
    assert launchers == []


def test_gpu_probing_has_one_home_that_imports_no_torch():
    code = "import sys, restorer.gpus; print('torch' in sys.modules)"
    out = fresh_python(code)
    assert out == "False"
    users = [f"{f.relative_to(REPO)}" for pkg in OURS if (REPO / pkg).exists()
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
    code = ("import sys, fusefs.service, fusefs.cli, blobstore.peers; "
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
