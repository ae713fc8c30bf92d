"""Duplicates over the whole dataset, found before it is split, so the verdict never hangs on where a random
split happened to put two copies.

The same picture (identical bytes, or perceptual hashes within `near_duplicate_distance`, data.hamming) under two labels
is a labelling error: it is refused, naming both files. Copies within one class are collapsed to one (the
first the source lists) and listed in the report. Copies that the source itself put in two of its own splits (when its
split is kept) are left to the leakage check, which refuses or drops them by `on_leakage`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from petqlora.data.entries import Item, refuse_listed
from petqlora.data.hamming import near_duplicates


@dataclass
class Duplicates:
    kept: list[Item]
    conflicts: list[dict] = field(default_factory=list)  # {"a", "b", "kind"}: one picture, two labels
    collapsed: list[dict] = field(default_factory=list)  # {"kept", "dropped", "kind"}: copies within a class


def _side(item: Item) -> dict:
    return {"id": item.id, "source": item.source, "label": item.label, "sha256": item.sha256}


def _pairs(items: list[Item], near_distance: int) -> dict[tuple[int, int], str]:
    """(i, j) -> how they match, i < j in `items`: identical bytes, or a near perceptual hash."""
    pairs: dict[tuple[int, int], str] = {}
    by_sha: dict[str, list[int]] = defaultdict(list)
    for k, item in enumerate(items):
        by_sha[item.sha256].append(k)
    for group in by_sha.values():  # each copy paired with the first: a group of n is n-1 pairs, not n^2
        pairs.update({(group[0], k): "identical bytes" for k in group[1:]})
    near = near_duplicates([it.phash for it in items], [it.dhash for it in items], near_distance)
    for (i, j), kind in near.items():
        if items[i].sha256 != items[j].sha256:
            pairs[(i, j)] = kind
    return pairs


def find_duplicates(items: list[Item], near_distance: int, split_of: dict[str, str | None]) -> Duplicates:
    """Conflicts and the collapse of copies within a class; `split_of[id]` is the split an item is bound to
    (the source's, when kept) or None: copies bound to two splits are not collapsed here."""
    pairs = _pairs(items, near_distance)
    result = Duplicates(kept=[])
    copies: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for (i, j), kind in sorted(pairs.items()):
        a, b = items[i], items[j]
        if a.label != b.label:
            result.conflicts.append({"a": _side(a), "b": _side(b), "kind": kind})
        elif split_of[a.id] == split_of[b.id]:
            copies[j].append((i, kind))
    # Greedy in the source's order: an item goes when it copies one already kept, so a chain a~b~c with a
    # and c apart keeps a and c (c copies only b, which went).
    kept: set[int] = set()
    for k, item in enumerate(items):
        match = next(((i, kind) for i, kind in copies[k] if i in kept), None)
        if match is None:
            kept.add(k)
            result.kept.append(item)
        else:
            result.collapsed.append({"kept": _side(items[match[0]]), "dropped": _side(item), "kind": match[1]})
    return result


def conflict_line(pair: dict) -> str:
    a, b = pair["a"], pair["b"]
    return f"{a['source']} ({a['label']}) <-> {b['source']} ({b['label']}): {pair['kind']}"


def refuse_conflicts(conflicts: list[dict]) -> None:
    refuse_listed([conflict_line(p) for p in conflicts],
                  f"{len(conflicts)} picture(s) appear under two labels (the same bytes, or a re-encoded copy): "
                  "a labelling error the model would learn both ways. Keep each picture under its one right label "
                  "(remove or relabel the other copy); if near-duplicates are distinct pictures, lower "
                  "near_duplicate_distance")
