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
