"""Recipes: what one published variant is, read strictly from recipes/<name>.yaml (inside the package)
or any recipe file.

A recipe names its source (hub repo at a pinned commit, or main with the expected SHA-256 of model.pt),
the dtype, the quantization of each component (with mixed-precision rules in the spirit of mlx-lm's
mixed_3_6), the evaluation sets, the acceptance bound against the bf16 variant and the target
repository. This module is the schema and its reader; pipeline.py runs the stages that build a recipe's
variant. It imports no stage and no MLX.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .errors import UserError
from .hub import COMMIT, REPO_ID, is_repo_id
from .modeldir import DTYPES
from .packaged import EVAL_SETS_DIR, RECIPES_DIR, packaged_names
from .strict_yaml import StrictMapping, check, kind_of

STAGES = ("download", "convert", "quantize", "evaluate", "card", "publish")  # what `run` builds (pipeline.py)
SHA256 = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
# Where a source is downloaded from (`source.hub`), and the branch a recipe may follow where no commit is
# published, if it pins model.pt by its SHA-256 (any other content is refused before conversion).
HUBS = {"huggingface": "main", "modelscope": "master"}

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
    "ctc": ("ctc_decoder", "ctc"),  # the CTC timestamp head, where the model has one
}
# Components a recipe may leave out, and whose setting they then take.
OPTIONAL_COMPONENTS = {"ctc": "audio_encoder"}
LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def component_of(path: str) -> str:
    matches = [
        (len(prefix), name)
        for name, prefixes in COMPONENTS.items()
        for prefix in prefixes
        if path == prefix or path.startswith(prefix + ".")
    ]
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
class Acceptance:
    """How much worse than its bf16 baseline a variant may be and still be carded and published: the
    error-rate delta (variant minus baseline, WER or CER, in percentage points), for every set
    (`max_error_rate_delta`) and per set (`sets`, which take precedence)."""

    max_error_rate_delta: float | None = None
    sets: tuple[tuple[str, float], ...] = ()

    def bound_for(self, set_name: str) -> float | None:
        return dict(self.sets).get(set_name, self.max_error_rate_delta)

    def field_for(self, set_name: str) -> str:
        """The recipe field the bound of `set_name` comes from, for messages."""
        return f"acceptance.sets.{set_name}" if set_name in dict(self.sets) else "acceptance.max_error_rate_delta"

    def to_dict(self) -> dict:
        """As config.json's recipe block carries it (so that `card` and `publish` check it too)."""
        return {
            "max_error_rate_delta": self.max_error_rate_delta,
            "sets": {name: {"max_error_rate_delta": bound} for name, bound in self.sets},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Acceptance:
        """The inverse of to_dict."""
        sets = tuple((name, bound["max_error_rate_delta"]) for name, bound in (data.get("sets") or {}).items())
        return cls(data.get("max_error_rate_delta"), sets)


def set_name(entry: str) -> str:
    """The name an evaluation set is reported under: eval_sets/NAME.yaml -> NAME, a folder -> its name,
    a .jsonl or .yaml file -> its stem (as `evalsets.EvalSet.load` names it)."""
    path = Path(entry)
    return path.name if path.is_dir() else path.stem if path.suffix in (".yaml", ".yml", ".jsonl") else entry


@dataclass(frozen=True)
class Recipe:
    name: str
    file: Path
    source: str  # hub repo id, or a local upstream directory (overrides only)
    revision: str | None  # 40-hex commit, or the hub's main branch (HUBS) with model_pt_sha256; None: not
    # known yet, and `run` refuses to download
    model_pt_sha256: str | None  # checked after download when given
    dtype: str
    audio_encoder: QuantSpec | None  # None: kept in `dtype`
    audio_adaptor: QuantSpec | None
    llm: QuantSpec | None
    embeddings: QuantSpec | None
    ctc: QuantSpec | None = None  # by default (no `ctc` key) the encoder's setting
    mixed: tuple[Rule, ...] = ()
    evaluation: tuple[str, ...] = ()  # eval_sets/ names, or local set paths (made absolute), for `evaluate`
    target: str = ""
    acceptance: Acceptance | None = None
    hub: str = "huggingface"  # where `source` is downloaded from (HUBS)
    file_sha256: str = field(default="", compare=False)

    @classmethod
    def load(cls, name_or_path: str | Path) -> Recipe:
        """A recipe by name (recipes/NAME.yaml) or by path; any problem is a UserError naming the
        file, the line and the field."""
        path = Path(name_or_path)
        if not path.is_file():
            if not NAME.fullmatch(str(name_or_path)) or not (RECIPES_DIR / f"{name_or_path}.yaml").is_file():
                known = ", ".join(packaged_names(RECIPES_DIR))
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

    def override(
        self, source: str | None = None, revision: str | None = None, model_pt_sha256: str | None = None
    ) -> Recipe:
        """The same variant from another source or commit (tests, mirrors, a local download). A commit
        pin and its SHA-256 describe the recipe's own source only: a changed source drops both, a
        changed revision the SHA-256, unless they are given too. A pin by content (a branch and the
        SHA-256) names the bytes, not a place: its SHA-256 stays, wherever they come from."""
        if revision is not None and not COMMIT.fullmatch(revision):
            raise UserError(f"--revision {revision!r} is not a pinned commit (40 lowercase hex digits)")
        if model_pt_sha256 is not None and not SHA256.fullmatch(model_pt_sha256):
            raise UserError(f"--sha256 {model_pt_sha256!r} is not a SHA-256 (64 lowercase hex digits)")
        source_moved = source is not None and source != self.source
        revision = revision or (None if source_moved else self.revision)
        moved = source_moved or revision != self.revision
        by_content = self.model_pt_sha256 is not None and not COMMIT.fullmatch(self.revision or "")
        return replace(
            self,
            source=source or self.source,
            revision=revision,
            model_pt_sha256=model_pt_sha256 or (None if moved and not by_content else self.model_pt_sha256),
        )

    @property
    def is_plain(self) -> bool:
        """Unquantized bfloat16: the baseline that the quantized variants of its source are compared with."""
        return self.dtype == "bfloat16" and not self.mixed and all(getattr(self, c) is None for c in COMPONENTS)

    def provenance(self) -> dict:
        return {
            "name": self.name,
            "file_sha256": self.file_sha256,
            "source": self.source,
            "hub": self.hub,
            "revision": self.revision,
            "target": self.target,
            "acceptance": self.acceptance.to_dict() if self.acceptance else None,
        }


def baseline_recipe(recipe: Recipe) -> str | None:
    """The recipe whose variant `recipe`'s is compared with: the unquantized bfloat16 one of the same
    source and revision in recipes/ (None for that one itself, or when recipes/ has none)."""
    if recipe.is_plain:
        return None
    candidates = (Recipe.load(file) for file in sorted(RECIPES_DIR.glob("*.yaml")))
    return next(
        (
            r.name
            for r in candidates
            if r.is_plain and (r.source, r.revision, r.hub) == (recipe.source, recipe.revision, recipe.hub)
        ),
        None,
    )


def baseline_for(recipe: Recipe) -> Recipe | None:
    """The baseline recipe of `recipe` as written in its file, built from the same source as `recipe`
    is (the same --source/--revision/--sha256 overrides), or None (see `baseline_recipe`)."""
    name = baseline_recipe(Recipe.load(recipe.file))
    if name is None:
        return None
    return replace(
        Recipe.load(name), source=recipe.source, revision=recipe.revision, model_pt_sha256=recipe.model_pt_sha256
    )


def _quant_spec(fields: StrictMapping) -> QuantSpec:
    mode = fields.take("mode", (str,), required=False, default="affine")
    check(
        fields,
        "mode",
        mode in QUANT_MODES,
        f"{mode!r} is not a quantization mode of MLX: use one of " + ", ".join(QUANT_MODES),
    )
    bits_allowed, groups_allowed = QUANT_MODES[mode]
    bits = fields.take("bits", (int,))
    check(
        fields,
        "bits",
        bits in bits_allowed,
        f"{bits} bits is not supported by mode {mode} (MLX supports {', '.join(map(str, bits_allowed))})",
    )
    group_size = fields.take("group_size", (int,), required=False, default=groups_allowed[0])
    check(
        fields,
        "group_size",
        group_size in groups_allowed,
        f"group size {group_size} is not supported by "
        f"mode {mode} (MLX supports {', '.join(map(str, sorted(groups_allowed)))})",
    )
    return QuantSpec(bits, group_size, mode)


def _component(parent: StrictMapping, key: str) -> QuantSpec | None:
    node = parent.node_of(key)
    if node is None:
        raise parent.error("is missing: give its quantization, or null to keep it in the recipe's dtype", key=key)
    if isinstance(node, yaml.ScalarNode) and parent.value(node, key) is None:
        return None
    fields = StrictMapping(parent.loader, parent.file, node, parent.name(key))
    spec = _quant_spec(fields)
    fields.finish()
    return spec


def _rule(loader, file: Path, node: yaml.Node, field: str) -> Rule:
    fields = StrictMapping(loader, file, node, field)
    match = fields.take("match", (str,))
    layers = fields.take("layers", (list,), required=False)
    check(
        fields,
        "layers",
        layers is None or (layers and all(type(i) is int and i >= 0 for i in layers)),
        "expected a non-empty list of layer indices (0, 1, ...)",
    )
    spec = _quant_spec(fields)
    fields.finish()
    return Rule(match, spec, tuple(layers) if layers is not None else None)


def _evaluation(top: StrictMapping) -> tuple[str, ...]:
    """Set names (eval_sets/NAME.yaml) or local sets (a folder with metadata.csv, a .jsonl manifest, a
    set YAML file), paths relative to the recipe file; every one must exist."""
    node = top.node_of("evaluation")
    if node is None or (isinstance(node, yaml.ScalarNode) and top.value(node, "evaluation") is None):
        return ()
    if not isinstance(node, yaml.SequenceNode):
        raise top.error(f"expected a list of evaluation sets, found {kind_of(node)}", node, "evaluation")
    entries, names = [], {}
    for i, item in enumerate(node.value):
        value = top.value(item, f"evaluation[{i}]")
        where = f"evaluation[{i}]"
        if type(value) is not str or not value:
            raise top.error(f"expected a set name or path, found {value!r}", item, where)
        if NAME.fullmatch(value) and (EVAL_SETS_DIR / f"{value}.yaml").is_file():
            entry = value
        elif "/" in value or value.endswith((".yaml", ".yml", ".jsonl")):
            path = top.file.parent / value
            if not path.exists():
                raise top.error(f"no local set {value!r}: {path} does not exist", item, where)
            entry = str(path.resolve())
        else:
            known = ", ".join(packaged_names(EVAL_SETS_DIR))
            raise top.error(
                f"no evaluation set {value!r}: name one of eval_sets/ ({known}) or give a local set's "
                "path relative to the recipe (./folder, set.jsonl, set.yaml)",
                item,
                where,
            )
        if set_name(entry) in names:
            raise top.error(
                f"two sets are named {set_name(entry)!r} (entries {names[set_name(entry)]} and {i})", item, where
            )
        names[set_name(entry)] = i
        entries.append(entry)
    return tuple(entries)


def _bound(fields: StrictMapping, key: str, required: bool) -> float | None:
    bound = fields.take(key, (int, float), required=required)
    check(
        fields,
        key,
        bound is None or (math.isfinite(bound) and bound >= 0),
        f"expected a number of percentage points >= 0, found {bound!r}",
    )
    return None if bound is None else float(bound)


def _acceptance(top: StrictMapping, evaluation: tuple[str, ...]) -> Acceptance | None:
    node = top.node_of("acceptance")
    if node is None or (isinstance(node, yaml.ScalarNode) and top.value(node, "acceptance") is None):
        return None
    fields = StrictMapping(top.loader, top.file, node, "acceptance")
    default = _bound(fields, "max_error_rate_delta", required=False)
    per_set = []
    if fields.node_of("sets") is not None:
        sets = fields.sub("sets")
        names = [set_name(entry) for entry in evaluation]
        for name, (key, _) in sets.items.items():
            if name not in names:
                raise sets.error(
                    f"{name!r} is not one of the recipe's evaluation sets ({', '.join(names) or 'none'})", key, name
                )
            one = sets.sub(name)
            per_set.append((name, _bound(one, "max_error_rate_delta", required=True)))
            one.finish()
        sets.finish()
    fields.finish()
    if default is None and not per_set:
        raise fields.error("give max_error_rate_delta (points, every set) and/or sets (per set bounds)")
    return Acceptance(default, tuple(per_set))


def _parse(file: Path) -> Recipe:
    """Recipe from a YAML file: see recipes/*.yaml for the layout."""
    text = file.read_bytes()
    top = StrictMapping.read(file, text, "recipe")
    loader = top.loader

    source = top.sub("source")
    repo = source.take("repo", (str,))
    check(source, "repo", REPO_ID.fullmatch(repo) is not None, f"{repo!r} is not a hub repo id ORG/NAME")
    # Present but null means "not known yet": the recipe loads, and run refuses to download.
    if "revision" not in source.items:
        raise source.error(
            "is missing: pin a 40-hex commit (null while it is not known: run then refuses)", key="revision"
        )
    hub = source.take("hub", (str,), required=False, default="huggingface")
    check(source, "hub", hub in HUBS, f"{hub!r} is not a hub this package downloads from: {', '.join(HUBS)}")
    sha = source.take("model_pt_sha256", (str,), required=False)
    check(
        source,
        "model_pt_sha256",
        sha is None or SHA256.fullmatch(sha) is not None,
        f"{sha!r} is not a SHA-256 (64 lowercase hex digits)",
    )
    revision = source.take("revision", (str, type(None)))
    check(
        source,
        "revision",
        revision is None or COMMIT.fullmatch(revision) is not None or (revision == HUBS[hub] and sha is not None),
        f"{revision!r} is not a pinned commit (40 lowercase hex digits): branch and tag names move; "
        f"only {HUBS[hub]!r} together with model_pt_sha256 (a pin by content) is accepted",
    )
    source.finish()

    dtype = top.take("dtype", (str,))
    check(
        top,
        "dtype",
        dtype in DTYPES,
        f"{dtype!r} is not supported: use one of {', '.join(DTYPES)} (Qwen3 is numerically unstable in float16)",
    )

    quant = top.sub("quantization")
    specs = {
        name: _component(quant, name)
        for name in COMPONENTS
        if name not in OPTIONAL_COMPONENTS or quant.node_of(name) is not None
    }
    for name, like in OPTIONAL_COMPONENTS.items():
        specs.setdefault(name, specs[like])
    mixed_node = quant.node_of("mixed")
    mixed_items = [] if mixed_node is None else mixed_node.value
    if mixed_node is not None and not isinstance(mixed_node, yaml.SequenceNode):
        raise quant.error(f"expected a list of rules, found {kind_of(mixed_node)}", mixed_node, "mixed")
    mixed = tuple(_rule(loader, file, node, f"quantization.mixed[{i}]") for i, node in enumerate(mixed_items))
    quant.finish()

    evaluation = _evaluation(top)
    acceptance = _acceptance(top, evaluation)
    target = top.take("target", (str,))
    check(top, "target", REPO_ID.fullmatch(target) is not None, f"{target!r} is not a hub repo id ORG/NAME")
    top.finish()
    return Recipe(
        file.stem,
        file,
        repo,
        revision,
        sha,
        dtype,
        **specs,
        mixed=mixed,
        evaluation=evaluation,
        target=target,
        acceptance=acceptance,
        hub=hub,
        file_sha256=hashlib.sha256(text).hexdigest(),
    )


def require_pin(recipe: Recipe) -> None:
    if not recipe.is_local and not is_repo_id(recipe.source):  # a folder that is not there (a typo)
        raise UserError(
            f"recipe {recipe.name}: source {recipe.source} not found (a local upstream directory or a hub repo id ORG/NAME)"
        )
    if not recipe.is_local and recipe.revision is None:
        raise UserError(
            f"recipe {recipe.name} ({recipe.file}): source.revision of {recipe.source} is not pinned "
            "(the commit is not known here); pin a 40-hex commit in the recipe or pass --revision. "
            "An unpinned revision is never downloaded."
        )
