"""Recipes: what one published variant is, read strictly from recipes/<name>.yaml, and `run`, which
builds it stage by stage (download -> convert -> quantize; evaluate, card and publish come later).

A recipe names its source (hub repo at a pinned commit, expected SHA-256 of model.pt), the dtype, the
quantization of each component (with mixed-precision rules in the spirit of mlx-lm's mixed_3_6), the
evaluation sets and the target repository. Every stage writes `<work>/<recipe>/<stage>` all-or-nothing
and is skipped when that directory is newer than its inputs, as Make would.

This module imports no MLX (the CLI reads STAGES at startup); the stages import what they need.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .errors import UserError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
SOURCE_RECORD = "source.json"  # in the download stage: what was fetched, so an overridden source is noticed
COMMIT = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-f]{64}")
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")

# What mx.quantize supports in MLX 0.32 (its "quantization modes" table): mode -> (bits, group sizes);
# the first group size is MLX's default.
QUANT_MODES = {
    "affine": ((1, 2, 3, 4, 5, 6, 8), (64, 32, 128)),
    "mxfp4": ((4,), (32,)),
    "mxfp8": ((8,), (32,)),
    "nvfp4": ((4,), (16,)),
}
# Recipe component -> the module paths it covers. The longest matching prefix wins, so the embeddings
# (which are also the tied LM head) are a choice of their own inside the LLM.
COMPONENTS = {
    "audio_encoder": ("audio_encoder",),
    "audio_adaptor": ("audio_adaptor",),
    "llm": ("llm",),
    "embeddings": ("llm.model.embed_tokens", "llm.lm_head"),
}
LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def component_of(path: str) -> str:
    matches = [(len(prefix), name) for name, prefixes in COMPONENTS.items() for prefix in prefixes
               if path == prefix or path.startswith(prefix + ".")]  # fmt: skip
    return max(matches)[1]


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    group_size: int
    mode: str = "affine"

    def params(self) -> dict:
        """As `to_quantized` takes them and mlx-lm's config stores them."""
        return {"group_size": self.group_size, "bits": self.bits, "mode": self.mode}


@dataclass(frozen=True)
class Rule:
    """Mixed precision: quantizable layers whose path matches `match` (and whose index after
    `.layers.` is in `layers`, when given) get `spec` instead of their component's setting."""

    match: str  # fnmatch pattern over module paths, e.g. llm.model.layers.*.mlp.down_proj
    spec: QuantSpec
    layers: tuple[int, ...] | None = None

    def applies(self, path: str) -> bool:
        if not fnmatch.fnmatchcase(path, self.match):
            return False
        index = LAYER_INDEX.search(path + ".")
        return self.layers is None or (index is not None and int(index.group(1)) in self.layers)


@dataclass(frozen=True)
class Recipe:
    name: str
    file: Path
    source: str  # hub repo id, or a local upstream directory (overrides only)
    revision: str | None  # 40-hex commit; None: not known yet, and `run` refuses to download
    model_pt_sha256: str | None  # checked after download when given
    dtype: str
    audio_encoder: QuantSpec | None  # None: kept in `dtype`
    audio_adaptor: QuantSpec | None
    llm: QuantSpec | None
    embeddings: QuantSpec | None
    mixed: tuple[Rule, ...] = ()
    evaluation: tuple[str, ...] = ()  # set names, for the evaluate stage
    target: str = ""
    file_sha256: str = field(default="", compare=False)

    @classmethod
    def load(cls, name_or_path: str | Path) -> Recipe:
        """A recipe by name (recipes/NAME.yaml) or by path; any problem is a UserError naming the
        file, the line and the field."""
        path = Path(name_or_path)
        if not path.is_file():
            if not NAME.fullmatch(str(name_or_path)) or not (RECIPES_DIR / f"{name_or_path}.yaml").is_file():
                known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
                raise UserError(f"no recipe {str(name_or_path)!r}: give a recipe file or one of: {known}")
            path = RECIPES_DIR / f"{name_or_path}.yaml"
        return _parse(path)

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()

    @property
    def source_label(self) -> str:
        return self.source if self.is_local else f"{self.source}@{self.revision}"

    def spec_for(self, path: str) -> QuantSpec | None:
        """How the layer at `path` is quantized: the first mixed rule that applies, else its component."""
        for rule in self.mixed:
            if rule.applies(path):
                return rule.spec
        return getattr(self, component_of(path))

    def override(self, source: str | None = None, revision: str | None = None,
                 model_pt_sha256: str | None = None) -> Recipe:  # fmt: skip
        """The same variant from another source or commit (tests, mirrors). The recipe's pin and
        SHA-256 describe its own source only: a changed source drops both, a changed revision the
        SHA-256, unless they are given too."""
        if revision is not None and not COMMIT.fullmatch(revision):
            raise UserError(f"--revision {revision!r} is not a pinned commit (40 lowercase hex digits)")
        if model_pt_sha256 is not None and not SHA256.fullmatch(model_pt_sha256):
            raise UserError(f"--sha256 {model_pt_sha256!r} is not a SHA-256 (64 lowercase hex digits)")
        source_moved = source is not None and source != self.source
        revision = revision or (None if source_moved else self.revision)
        moved = source_moved or revision != self.revision
        return replace(self, source=source or self.source, revision=revision,
                       model_pt_sha256=model_pt_sha256 or (None if moved else self.model_pt_sha256))  # fmt: skip

    def provenance(self) -> dict:
        return {"name": self.name, "file_sha256": self.file_sha256, "source": self.source,
                "revision": self.revision, "target": self.target}  # fmt: skip


# -- strict YAML reading -------------------------------------------------------------------------


class _Mapping:
    """One YAML mapping, read strictly: every key must be taken once; errors name file:line and field."""

    def __init__(self, loader: yaml.SafeLoader, file: Path, node: yaml.Node, field: str = ""):
        self.loader, self.file, self.node, self.field = loader, file, node, field
        if not isinstance(node, yaml.MappingNode):
            raise self.error(f"expected a mapping, found {_kind(node)}")
        self.items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if key.value in self.items:
                raise self.error(f"{key.value!r} is given twice", key)
            self.items[key.value] = (key, value)
        self.taken: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.field}.{key}" if self.field else key

    def error(self, message: str, node: yaml.Node | None = None, key: str | None = None) -> UserError:
        line = (node or self.node).start_mark.line + 1
        return UserError(f"{self.file}:{line}: {self.name(key) if key else self.field or 'recipe'}: {message}")

    def node_of(self, key: str) -> yaml.Node | None:
        self.taken.add(key)
        return self.items[key][1] if key in self.items else None

    def take(self, key: str, kinds: tuple[type, ...], required: bool = True, default=None):
        node = self.node_of(key)
        if node is None:
            if required:
                raise self.error("is missing (required)", key=key)
            return default
        value = self.loader.construct_object(node, deep=True)
        if value is None and not required:
            return default
        if type(value) not in kinds:  # exact types: `true` is not a number of bits
            wanted = " or ".join(k.__name__.replace("NoneType", "null") for k in kinds)
            raise self.error(f"expected {wanted}, found {value!r}", node, key)
        return value

    def sub(self, key: str) -> _Mapping:
        node = self.node_of(key)
        if node is None:
            raise self.error("is missing (required)", key=key)
        return _Mapping(self.loader, self.file, node, self.name(key))

    def finish(self) -> None:
        for key in self.items.keys() - self.taken:
            allowed = ", ".join(sorted(self.taken))
            raise self.error(f"unknown key {key!r} (allowed here: {allowed})", self.items[key][0], key)


def _kind(node: yaml.Node) -> str:
    return {yaml.ScalarNode: "a scalar", yaml.SequenceNode: "a list"}.get(type(node), "a mapping")


def _check(fields: _Mapping, key: str, ok: bool, message: str) -> None:
    if not ok:
        node = fields.items[key][1] if key in fields.items else None
        raise fields.error(message, node, key)


def _quant_spec(fields: _Mapping) -> QuantSpec:
    mode = fields.take("mode", (str,), required=False, default="affine")
    _check(fields, "mode", mode in QUANT_MODES, f"{mode!r} is not a quantization mode of MLX: use one of "
           + ", ".join(QUANT_MODES))  # fmt: skip
    bits_allowed, groups_allowed = QUANT_MODES[mode]
    bits = fields.take("bits", (int,))
    _check(fields, "bits", bits in bits_allowed, f"{bits} bits is not supported by mode {mode} "
           f"(MLX supports {', '.join(map(str, bits_allowed))})")  # fmt: skip
    group_size = fields.take("group_size", (int,), required=False, default=groups_allowed[0])
    _check(fields, "group_size", group_size in groups_allowed, f"group size {group_size} is not supported by "
           f"mode {mode} (MLX supports {', '.join(map(str, sorted(groups_allowed)))})")  # fmt: skip
    return QuantSpec(bits, group_size, mode)


def _component(parent: _Mapping, key: str) -> QuantSpec | None:
    node = parent.node_of(key)
    if node is None:
        raise parent.error("is missing: give its quantization, or null to keep it in the recipe's dtype", key=key)
    if isinstance(node, yaml.ScalarNode) and parent.loader.construct_object(node) is None:
        return None
    fields = _Mapping(parent.loader, parent.file, node, parent.name(key))
    spec = _quant_spec(fields)
    fields.finish()
    return spec


def _rule(loader, file: Path, node: yaml.Node, field: str) -> Rule:
    fields = _Mapping(loader, file, node, field)
    match = fields.take("match", (str,))
    layers = fields.take("layers", (list,), required=False)
    _check(fields, "layers", layers is None or (layers and all(type(i) is int and i >= 0 for i in layers)),
           "expected a non-empty list of layer indices (0, 1, ...)")  # fmt: skip
    spec = _quant_spec(fields)
    fields.finish()
    return Rule(match, spec, tuple(layers) if layers is not None else None)


def _parse(file: Path) -> Recipe:
    """Recipe from a YAML file: see recipes/*.yaml for the layout."""
    from .convert import DTYPES  # imports MLX: only once a recipe is read

    text = file.read_bytes()
    loader = yaml.SafeLoader(text.decode())
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as err:
        raise UserError(f"{file}: not valid YAML: {err}") from None
    finally:
        loader.dispose()
    if root is None:
        raise UserError(f"{file}: the recipe is empty")
    top = _Mapping(loader, file, root)

    source = top.sub("source")
    repo = source.take("repo", (str,))
    _check(source, "repo", REPO_ID.fullmatch(repo) is not None, f"{repo!r} is not a hub repo id ORG/NAME")
    # Present but null means "not known yet": the recipe loads, and run refuses to download.
    if "revision" not in source.items:
        raise source.error("is missing: pin a 40-hex commit (null while it is not known: run then refuses)",
                           key="revision")  # fmt: skip
    revision = source.take("revision", (str, type(None)))
    _check(source, "revision", revision is None or COMMIT.fullmatch(revision) is not None,
           f"{revision!r} is not a pinned commit (40 lowercase hex digits); branch and tag names move")  # fmt: skip
    sha = source.take("model_pt_sha256", (str,), required=False)
    _check(source, "model_pt_sha256", sha is None or SHA256.fullmatch(sha) is not None,
           f"{sha!r} is not a SHA-256 (64 lowercase hex digits)")  # fmt: skip
    source.finish()

    dtype = top.take("dtype", (str,))
    _check(top, "dtype", dtype in DTYPES, f"{dtype!r} is not supported: use one of {', '.join(DTYPES)} "
           "(Qwen3 is numerically unstable in float16)")  # fmt: skip

    quant = top.sub("quantization")
    specs = {name: _component(quant, name) for name in COMPONENTS}
    mixed_node = quant.node_of("mixed")
    mixed_items = [] if mixed_node is None else mixed_node.value
    if mixed_node is not None and not isinstance(mixed_node, yaml.SequenceNode):
        raise quant.error(f"expected a list of rules, found {_kind(mixed_node)}", mixed_node, "mixed")
    mixed = tuple(_rule(loader, file, node, f"quantization.mixed[{i}]") for i, node in enumerate(mixed_items))
    quant.finish()

    evaluation = top.take("evaluation", (list,), required=False, default=[])
    _check(top, "evaluation", all(type(s) is str and s for s in evaluation), "expected a list of set names")
    target = top.take("target", (str,))
    _check(top, "target", REPO_ID.fullmatch(target) is not None, f"{target!r} is not a hub repo id ORG/NAME")
    top.finish()
    return Recipe(file.stem, file, repo, revision, sha, dtype, **specs, mixed=mixed, evaluation=tuple(evaluation),
                  target=target, file_sha256=hashlib.sha256(text).hexdigest())  # fmt: skip


# -- stages ----------------------------------------------------------------------------------------


def log(recipe: Recipe, message: str) -> None:
    print(f"[{recipe.name}] {message}", file=sys.stderr, flush=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (no second copy of a 2 GB checkpoint from the hub cache) or copy across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.hardlink_to(src.resolve())
    except OSError:
        shutil.copy2(src, dst)


def require_pin(recipe: Recipe) -> None:
    if not recipe.is_local and recipe.revision is None:
        raise UserError(f"recipe {recipe.name} ({recipe.file}): source.revision of {recipe.source} is not pinned "
                        "(the commit is not known here); pin a 40-hex commit in the recipe or pass --revision. "
                        "An unpinned revision is never downloaded.")  # fmt: skip


def download(recipe: Recipe, dst: Path) -> Path:
    """The upstream files conversion needs, from the hub at the pinned commit (through the Hugging Face
    cache, so a re-run or another recipe of the same source downloads nothing) or from a local
    directory; model.pt's SHA-256 is checked before any later stage can see it."""
    from huggingface_hub.utils import filter_repo_objects

    from .convert import CHECKPOINT, UPSTREAM_FILES, download as fetch, sha256, staged_output

    require_pin(recipe)
    src = Path(recipe.source) if recipe.is_local else fetch(recipe.source, recipe.revision)
    with staged_output(dst) as out:
        files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
        for name in filter_repo_objects(files, allow_patterns=UPSTREAM_FILES):
            _link_or_copy(src / name, out / name)
        if not (out / CHECKPOINT).is_file():
            raise UserError(f"{recipe.source_label} has no {CHECKPOINT}")
        digest = sha256(out / CHECKPOINT)
        if recipe.model_pt_sha256 is None:
            log(recipe, f"download: {CHECKPOINT} SHA-256 {digest} (not checked: none expected for this source)")
        elif digest != recipe.model_pt_sha256:
            raise UserError(f"{CHECKPOINT} of {recipe.source_label} has SHA-256 {digest}, but recipe "
                            f"{recipe.name} expects {recipe.model_pt_sha256}: corrupt download or wrong pin; "
                            "nothing was converted")  # fmt: skip
        record = {"source": recipe.source, "revision": recipe.revision, "model_pt_sha256": digest}
        (out / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return dst


def _same_source(recipe: Recipe, download_dir: Path) -> bool:
    try:
        record = json.loads((download_dir / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return False
    expected = recipe.model_pt_sha256 or record.get("model_pt_sha256")
    return record == {"source": recipe.source, "revision": recipe.revision, "model_pt_sha256": expected}


def _download(recipe: Recipe, src: None, dst: Path) -> Path:
    return download(recipe, dst)


def _convert(recipe: Recipe, src: Path, dst: Path) -> Path:
    from .convert import convert

    return convert(src, dst, dtype=recipe.dtype, source_id=recipe.source_label)


def _quantize(recipe: Recipe, src: Path, dst: Path) -> Path:
    from .quantize import quantize

    return quantize(src, dst, recipe)


BUILDERS = {"download": _download, "convert": _convert, "quantize": _quantize}  # each (recipe, src, dst)
STAGES = tuple(BUILDERS)


def up_to_date(output: Path, inputs: list[Path]) -> bool:
    """Make's rule: the output exists and is not older than any input. A stage directory appears only
    when complete (it is renamed from `.tmp`), and its mtime is when its last entry was written."""
    return output.is_dir() and all(output.stat().st_mtime_ns >= p.stat().st_mtime_ns for p in inputs)


def _discard(output: Path) -> None:
    """Remove a stale stage output so that no half-deleted directory can look complete."""
    if output.exists():
        stale = output.with_name(output.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)
        output.rename(stale)
        shutil.rmtree(stale)


def run(recipe: Recipe, work: str | Path = "work", until: str | None = None) -> Path:
    """Build the recipe's stages in order up to `until` (default: the last one) under work/<recipe>/,
    skipping each stage whose output is up to date; returns the last stage's directory."""
    if until is not None and until not in STAGES:
        raise UserError(f"unknown stage {until!r}: the stages are {', '.join(STAGES)}")
    require_pin(recipe)  # before anything is logged or created
    previous = None
    for stage in STAGES[: STAGES.index(until or STAGES[-1]) + 1]:
        output = Path(work) / recipe.name / stage
        inputs = [recipe.file] + ([previous] if previous else [])
        if up_to_date(output, inputs) and (stage != "download" or _same_source(recipe, output)):
            log(recipe, f"{stage}: up to date, skipped ({output})")
        else:
            _discard(output)
            log(recipe, f"{stage}: building {output}")
            BUILDERS[stage](recipe, previous, output)
        previous = output
    return previous
