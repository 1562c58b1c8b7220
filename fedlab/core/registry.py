"""Name -> factory tables for strategies, models, datasets and partitions.

The CLI and the workbench list what is registered here, so a strategy registered in a
notebook cell (``@fedlab.register_algorithm("mine")``) shows up without UI edits. A factory's
keyword arguments (with their defaults) are its knobs: ``knobs("fedprox")`` lists them.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable
    description: str

    def knobs(self) -> dict[str, Any]:
        """Keyword parameters of the factory and their defaults."""
        return {p.name: p.default for p in inspect.signature(self.factory).parameters.values()
                if p.kind is p.KEYWORD_ONLY or p.default is not p.empty}


class Registry:
    """A named table of factories (``kind`` is 'algorithm', 'model', 'dataset' or 'partition')."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, description: str | None = None) -> Callable[[Callable], Callable]:
        def decorate(factory: Callable) -> Callable:
            doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
            self._entries[name] = Entry(name, factory, doc)
            return factory

        return decorate

    def __getitem__(self, name: str) -> Entry:
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}{hint}; choose one of {sorted(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]


ALGORITHMS = Registry("algorithm")
MODELS = Registry("model")
DATASETS = Registry("dataset")
PARTITIONS = Registry("partition")

register_algorithm = ALGORITHMS.register
register_model = MODELS.register
register_dataset = DATASETS.register
register_partition = PARTITIONS.register


# ---- specs: 'name:a,b' --------------------------------------------------------------------------
WHOLE_REST = ("csv", "parquet", "npz", "column")     # names whose one value is everything after ':' (a path, a column)


def spec_knobs(entry: Entry) -> list[inspect.Parameter]:
    """The factory's keyword-only parameters, in the order a 'name:a,b' spec fills them."""
    return [p for p in inspect.signature(entry.factory).parameters.values() if p.kind is p.KEYWORD_ONLY]


def value_from_text(where: str, text: str, default):
    """A spec or command-line value parsed to the type of the knob's ``default`` (bool, int,
    float, tuple of ints, else text); ValueError "WHERE must be a number, got 'abc'"."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("0", "1", "true", "false"):
                raise ValueError
            return text.lower() in ("1", "true")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        kind = {bool: "0, 1, true or false", int: "an integer", float: "a number"}.get(
            type(default), "comma-separated integers")
        raise ValueError(f"{where} must be {kind}, got {text!r}") from None
    return text


def parse_spec(spec: str, registry: Registry, param: str) -> tuple[Entry, dict]:
    """Split 'name:a,b' into (registry entry, {knob: value}), filling the factory's keyword-only
    knobs in order with values of their defaults' types; ValueError starts with ``param``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{param}: expected a spec string such as {registry.names()[0]!r}, got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    try:
        entry = registry[name]
    except ValueError as err:
        raise ValueError(f"{param}: {err}") from None
    if not rest:
        return entry, {}
    knobs = spec_knobs(entry)
    values = [rest] if name in WHOLE_REST else rest.split(",")
    if len(values) > len(knobs):
        raise ValueError(f"{param}: {name} takes at most {len(knobs)} values "
                         f"({', '.join(p.name for p in knobs) or 'none'}), got {len(values)} in {spec!r}")
    return entry, {p.name: value_from_text(f"{param}: {name} {p.name}", v.strip(), p.default)
                   for p, v in zip(knobs, values)}
