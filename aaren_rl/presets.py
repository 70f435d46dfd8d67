"""Find and read the YAML presets: agents (``agents/*.yaml``) and tasks (``envs/*.yaml``).

A preset is named (``decision-aaren``) or given as a path to a user's own file. Named presets
ship inside the wheel (``aaren_rl/_presets``); in a source checkout they are read from the
repository root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

_PACKAGE_DIR = Path(__file__).resolve().parent
_SEARCH_ROOTS = (_PACKAGE_DIR / "_presets", _PACKAGE_DIR.parent)
KINDS = ("agents", "envs")


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (plain
    YAML keeps the last value without a word, so ``lr: 1e-3`` ... ``lr: 1e-4`` would silently
    train at 1e-4)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                hash(key)
            except (yaml.YAMLError, TypeError):
                continue  # the base class reports keys that cannot be keys
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (first on line "
                    f"{seen[key].line + 1}); keep one of them",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML text safely, refusing duplicated keys (:class:`UniqueKeyLoader`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def preset_dir(kind: str) -> Path:
    """The folder that holds the named presets of ``kind`` ('agents' or 'envs')."""
    if kind not in KINDS:
        raise ValueError(f"unknown preset kind {kind!r}; expected one of {KINDS}")
    for root in _SEARCH_ROOTS:
        if (root / kind).is_dir():
            return root / kind
    raise FileNotFoundError(f"no {kind}/ preset folder found under {list(map(str, _SEARCH_ROOTS))}")


def available(kind: str) -> list[str]:
    """Names of the shipped presets of ``kind``."""
    return sorted(p.stem for p in preset_dir(kind).glob("*.yaml"))


def resolve(kind: str, name_or_path: str | Path) -> Path:
    """A preset's file: an existing path is taken as is, otherwise a shipped preset's name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"{kind} preset file {str(path)!r} does not exist")
        return path
    candidate = preset_dir(kind) / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise FileNotFoundError(
            f"no {kind} preset named {str(name_or_path)!r}; shipped: {', '.join(available(kind))}; "
            "or pass a path to your own .yaml file"
        )
    return candidate


def load(kind: str, name_or_path: str | Path) -> tuple[dict[str, Any], Path]:
    """Read a preset: returns (mapping, file it came from). Errors name the file."""
    path = resolve(kind, name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8 YAML"
        ) from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a mapping of keys to values at the top level, got "
            f"{type(data).__name__}"
        )
    return data, path


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (``line 3, column 7``)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())
