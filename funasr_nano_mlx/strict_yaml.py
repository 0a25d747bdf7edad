"""YAML read strictly, for the files people write by hand (recipes, evaluation-set definitions): every
key of a mapping must be known and given once, every value of the expected type, and every error names
the file, the line and the field (FILE:LINE: field: problem). Also the UTF-8 and JSON of such files and
of reports read back, refused as FILE:LINE. No MLX, no stage."""

from __future__ import annotations

import json
import reprlib
from pathlib import Path

import yaml

from .errors import UserError
from .hub import one_line


def read_utf8(file: Path, data: bytes) -> str:
    """The text of a file people write by hand: UTF-8, with or without the BOM that spreadsheet programs
    and Windows editors write; anything else is refused naming the line of the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(
            f"{file}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x}): save the file as UTF-8"
        ) from None


def parse_json(file: Path, text: str, line: int = 1):
    """JSON `text` read from `file` (starting at `line` of it: one line of a JSONL file), refused in one
    line naming FILE:LINE where it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{file}:{line + err.lineno - 1}: not valid JSON: {err.msg}") from None


# PyYAML composes a node by recursion, one Python frame per level, so `[[[...]]]` nested a few thousand
# deep ends in a RecursionError. A recipe or set nests four levels at most.
MAX_DEPTH = 32


class _Refused(yaml.YAMLError):
    def __init__(self, event: yaml.Event, problem: str):
        self.problem, self.line = problem, event.start_mark.line + 1


class _Loader(yaml.SafeLoader):
    """SafeLoader without aliases and without deep nesting. `*name` repeats the node anchored `&name`, so
    ten lines can stand for a billion nodes ("billion laughs"), and building or printing them exhausts
    memory. No recipe or set needs them, so the first alias is refused before any node is built."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(event, f"YAML aliases (*{event.anchor}) are not allowed")
        if self.depth >= MAX_DEPTH:
            raise _Refused(self.peek_event(), f"nested more than {MAX_DEPTH} levels deep")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother = 80, 80


def short(value) -> str:
    """A value as messages quote it, cut short: a message is one line, whatever the file holds."""
    return _SHORT.repr(value)


class StrictMapping:
    """One YAML mapping, read strictly: every key must be taken once; errors name file:line and field."""

    def __init__(self, loader: yaml.SafeLoader, file: Path, node: yaml.Node, field: str = "", what: str = ""):
        self.loader, self.file, self.node, self.field, self.what = loader, file, node, field, what
        if not isinstance(node, yaml.MappingNode):
            raise self.error(f"expected a mapping, found {kind_of(node)}")
        self.items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if key.value in self.items:
                raise self.error(f"{key.value!r} is given twice", key)
            self.items[key.value] = (key, value)
        self.taken: set[str] = set()

    @classmethod
    def read(cls, file: Path, text: bytes, what: str) -> StrictMapping:
        """The top mapping of a YAML file; `what` names the file's kind in messages ("recipe", "set")."""
        try:
            loader = _Loader(read_utf8(file, text))
        except yaml.YAMLError as err:  # a control character
            raise UserError(f"{file}: not valid YAML: {one_line(err)}") from None
        try:
            root = loader.get_single_node()
        except _Refused as err:
            raise UserError(f"{file}:{err.line}: {err.problem} in a {what}: write the value out") from None
        except yaml.YAMLError as err:
            raise UserError(f"{file}: not valid YAML: {one_line(err)}") from None
        finally:
            loader.dispose()
        if root is None:
            raise UserError(f"{file}: the {what} is empty")
        return cls(loader, file, root, what=what)

    def name(self, key: str) -> str:
        return f"{self.field}.{key}" if self.field else key

    def error(self, message: str, node: yaml.Node | None = None, key: str | None = None) -> UserError:
        line = (node or self.node).start_mark.line + 1
        return UserError(f"{self.file}:{line}: {self.name(key) if key else self.field or self.what}: {message}")

    def node_of(self, key: str) -> yaml.Node | None:
        self.taken.add(key)
        return self.items[key][1] if key in self.items else None

    def take(self, key: str, kinds: tuple[type, ...], required: bool = True, default=None):
        node = self.node_of(key)
        if node is None:
            if required:
                raise self.error("is missing (required)", key=key)
            return default
        value = self.value(node, key)
        if value is None and not required:
            return default
        if type(value) not in kinds:  # exact types: `true` is not a number of bits
            wanted = " or ".join(k.__name__.replace("NoneType", "null") for k in kinds)
            raise self.error(f"expected {wanted}, found {short(value)}", node, key)
        return value

    def value(self, node: yaml.Node, key: str):
        """The Python value of a node; one that YAML cannot build (a date like 2020-13-45) is an error here."""
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, yaml.YAMLError) as err:
            raise self.error(f"cannot be read: {one_line(err)}", node, key) from None

    def sub(self, key: str) -> StrictMapping:
        node = self.node_of(key)
        if node is None:
            raise self.error("is missing (required)", key=key)
        return StrictMapping(self.loader, self.file, node, self.name(key), self.what)

    def finish(self) -> None:
        for key in self.items.keys() - self.taken:
            allowed = ", ".join(sorted(self.taken))
            raise self.error(f"unknown key {key!r} (allowed here: {allowed})", self.items[key][0], key)


def kind_of(node: yaml.Node) -> str:
    return {yaml.ScalarNode: "a scalar", yaml.SequenceNode: "a list"}.get(type(node), "a mapping")


def check(fields: StrictMapping, key: str, ok: bool, message: str) -> None:
    if not ok:
        node = fields.items[key][1] if key in fields.items else None
        raise fields.error(message, node, key)
