"""Splitting checked items: the source's own split or a stratified random one, leakage across splits (same
bytes or a near perceptual hash), and the per-class caps."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from petqlora.data.dataset import SPLITS
from petqlora.data.entries import Item


def carve_counts(n: int, fractions: list[float]) -> list[int] | None:
    """Images per carved split for a class of n; at least one each while train keeps one. None: too few."""
    if n <= len(fractions):
        return None
    counts = [max(1, math.floor(n * f + 0.5)) for f in fractions]
    while sum(counts) > n - 1:
        counts[counts.index(max(counts))] -= 1
    return counts


def assign_splits(
    items: list[Item], use_source_split: bool, fractions: dict[str, float], rng: np.random.Generator,
    notes: list[str],
) -> dict[str, list[Item]]:
    """Items by split. The source's split is kept where it has one (with a train part); the splits it lacks
    are carved from train per class by `fractions` ({'validation': f, 'test': f}). Notes say what was done."""
    present = {item.source_split for item in items} - {None}
    fixed = use_source_split and bool(present)
    if fixed and "train" not in present:
        notes.append(f"the source's own split has no train part ({sorted(present)}): splits drawn at random")
        fixed = False
    splits: dict[str, list[Item]] = {s: [] for s in SPLITS}
    pool: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        target = item.source_split if fixed else "train"
        if target == "train":
            pool[item.label].append(item)
        else:
            splits[target].append(item)
    carve = [s for s in ("validation", "test") if not (fixed and s in present)]
    if fixed and carve:
        notes.append(f"{' and '.join(carve)} carved from the source's train split, stratified by class")
    for label in sorted(pool):
        members = sorted(pool[label], key=lambda it: it.id)  # sorted first: the seed alone decides the order
        order = [members[i] for i in rng.permutation(len(members))]
        counts = carve_counts(len(order), [fractions[s] for s in carve]) if carve else []
        if counts is None:
            notes.append(f"class {label!r} has only {len(order)} usable image(s) to split: all kept in train")
            counts = [0] * len(carve)
        start = 0
        for split, count in zip(carve, counts):
            splits[split].extend(order[start : start + count])
            start += count
        splits["train"].extend(order[start:])
    return splits


def find_leaks(splits: dict[str, list[Item]], distance: int) -> list[dict]:
    """Pairs of the same image (bytes, or phash within `distance`; -1: bytes only) in two splits; later
    split second."""
    pairs: list[dict] = []
    earlier: list[tuple[str, Item]] = []
    for split in SPLITS:
        later = splits[split]
        if earlier and later:
            pairs += _identical(earlier, split, later)
            if distance >= 0:
                pairs += _near(earlier, split, later, distance)
        earlier.extend((split, item) for item in later)
    order = {s: i for i, s in enumerate(SPLITS)}
    pairs.sort(key=lambda p: (order[p["b"]["split"]], p["b"]["id"], order[p["a"]["split"]], p["a"]["id"]))
    return pairs


def _identical(earlier: list[tuple[str, Item]], split: str, later: list[Item]) -> list[dict]:
    by_sha: dict[str, list[tuple[str, Item]]] = defaultdict(list)
    for pair in earlier:
        by_sha[pair[1].sha256].append(pair)
    return [
        _pair(first_split, first, split, item, "identical bytes", 0)
        for item in later
        for first_split, first in by_sha.get(item.sha256, ())
    ]


def _near(earlier: list[tuple[str, Item]], split: str, later: list[Item], distance: int) -> list[dict]:
    pairs: list[dict] = []
    first_hashes = np.array([it.phash for _, it in earlier], dtype=np.uint64)
    later_hashes = np.array([it.phash for it in later], dtype=np.uint64)
    chunk = max(1, 4_000_000 // len(first_hashes))  # bounds the distance matrix to ~4M cells
    for start in range(0, len(later_hashes), chunk):
        block = later_hashes[start : start + chunk, None] ^ first_hashes[None, :]
        dist = np.bitwise_count(block)
        for li, fi in zip(*np.nonzero(dist <= distance)):
            item, (first_split, first) = later[start + li], earlier[fi]
            if item.sha256 != first.sha256:  # identical bytes are paired once, by _identical
                kind = f"near-duplicate (phash distance {int(dist[li, fi])})"
                pairs.append(_pair(first_split, first, split, item, kind, int(dist[li, fi])))
    return pairs


def _pair(split_a: str, a: Item, split_b: str, b: Item, kind: str, distance: int) -> dict:
    def side(split: str, item: Item) -> dict:
        return {"split": split, "id": item.id, "source": item.source, "sha256": item.sha256}

    return {"a": side(split_a, a), "b": side(split_b, b), "kind": kind, "distance": distance}


def pair_line(pair: dict) -> str:
    a, b = pair["a"], pair["b"]
    return f"{a['split']} {a['source']} <-> {b['split']} {b['source']}: {pair['kind']}"


def drop_leaked(splits: dict[str, list[Item]], pairs: list[dict]) -> int:
    """Removes the later split's copy of each leaked pair; returns how many items went."""
    leaked = {(p["b"]["split"], p["b"]["id"]) for p in pairs}
    for split in SPLITS:
        splits[split] = [it for it in splits[split] if (split, it.id) not in leaked]
    return len(leaked)


def cap(splits: dict[str, list[Item]], caps: dict[str, int | None], rng: np.random.Generator) -> int:
    """Keeps at most caps[split] items per class in each split, drawn by `rng`; returns how many went."""
    removed = 0
    for split in SPLITS:
        limit = caps[split]
        if limit is None:
            continue
        by_class: dict[str, list[Item]] = defaultdict(list)
        for item in splits[split]:
            by_class[item.label].append(item)
        kept: list[Item] = []
        for label in sorted(by_class):
            members = sorted(by_class[label], key=lambda it: it.id)
            kept.extend(members[i] for i in sorted(rng.permutation(len(members))[:limit]))
        removed += len(splits[split]) - len(kept)
        splits[split] = kept
    return removed
