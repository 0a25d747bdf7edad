"""The package's imports point one way: leaves at the bottom, the model and inference above them, the
stages above those, the pipeline, then the command line and the server on top. Parsed from the source
(imports inside functions included), so an import circle or an upward import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "funasr_nano_mlx"
# Lowest first. A module may import modules of its own layer or of a lower one, never of a higher one.
LAYERS = [
    # facts and helpers that know nothing of the rest: no stage, no model
    {
        "errors",
        "decoding",
        "packaged",
        "subtitles",
        "files",
        "hub",
        "languages",
        "strict_yaml",
        "ctc",
        "cuda_kernels",
        "cublas_heuristic",
    },
    # the model, and the schemas and readers of what the stages read (modeldir: a model's config and its checks)
    {"modeldir", "model", "audio", "normalize", "scoring", "recipe", "evalsets", "segment"},
    # inference
    {"vad", "transcribe", "decode_step", "scheduler", "align"},
    # stages, each a function from one directory to the next
    {"convert", "quantize", "evaluate", "report", "card", "publish"},
    {"pipeline"},
    # entry points
    {"cli", "serve", "__main__", "__init__"},
]


def package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (relative imports: `from .x import y`, `from . import x`)."""
    graph = {}
    for file in sorted(PACKAGE.glob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        graph[file.stem] = imported - {file.stem}
    return graph


def layer_of(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if module in layer)


def test_every_module_has_a_layer():
    unplaced = sorted(set(package_imports()) - set().union(*LAYERS))
    assert not unplaced, f"place these modules in a layer of {__name__}.LAYERS: {unplaced}"


def test_no_module_imports_upward():
    upward = [
        (module, imported)
        for module, imports in package_imports().items()
        for imported in imports
        if layer_of(imported) > layer_of(module)
    ]
    assert not upward, upward


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (a depth-first search meeting a module still on its path), or None."""
    done, path = set(), []

    def visit(module: str) -> list[str] | None:
        path.append(module)
        for imported in sorted(graph[module]):
            if imported in path:
                return path[path.index(imported) :] + [imported]
            if imported not in done and (circle := visit(imported)):
                return circle
        done.add(path.pop())
        return None

    return next((circle for module in sorted(graph) if module not in done and (circle := visit(module))), None)


def test_no_import_circle():
    assert find_circle(package_imports()) is None
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the search finds one


def test_the_command_line_starts_without_mlx():
    """`funasr-nano-mlx --help` (and every command before it needs a model) imports no MLX, torch,
    transformers, datasets or numpy; the package's names still work once asked for."""
    import subprocess
    import sys

    code = """if True:
        import sys
        from funasr_nano_mlx.cli import main
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"mlx", "mlx_lm", "torch", "transformers", "datasets", "numpy"})
        assert not heavy, heavy
        import funasr_nano_mlx.transcribe  # the submodule, imported first by another route
        from funasr_nano_mlx import Transcription, load, transcribe
        assert callable(transcribe) and transcribe.__module__ == "funasr_nano_mlx.transcribe", transcribe
        assert load.__name__ == "load" and Transcription.__name__ == "Transcription"
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
