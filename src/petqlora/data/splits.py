"""Splitting checked items: the source's own split or a stratified random one, leakage across splits (same
bytes or a near perceptual hash), and the per-class caps."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from petqlora.data.dataset import SPLITS
from petqlora.data.entries import Item
from petqlora.data.hamming import near_duplicates


def carve_counts(n: int, fractions: list[float]) -> list[int] | None:
    """Images per carved split for a class of n; at least one each while train keeps one. None: too few."""
    if n <= len(fractions):
        return None
    counts = [max(1, math.floor(n * f + 0.5)) for f in fractions]
    while sum(counts) > n - 1:
        counts[counts.index(max(counts))] -= 1
    return counts


def source_split_kept(items: list[Item], use_source_split: bool) -> bool:
    """Whether the source's own split is kept: asked for, and the source has one with a train part."""
    present = {item.source_split for item in items} - {None}
    return use_source_split and "train" in present


def bound_splits(items: list[Item], use_source_split: bool) -> dict[str, str | None]:
    """id -> the split an item is bound to before any is drawn: the source's, when kept; else None."""
    kept = source_split_kept(items, use_source_split)
    return {item.id: item.source_split if kept else None for item in items}


def assign_splits(
    items: list[Item], use_source_split: bool, fractions: dict[str, float], rng: np.random.Generator,
    notes: list[str],
) -> dict[str, list[Item]]:
    """Items by split. The source's split is kept where it has one (with a train part); the splits it lacks
    are carved from train per class by `fractions` ({'validation': f, 'test': f}). Notes say what was done."""
    present = {item.source_split for item in items} - {None}
    fixed = source_split_kept(items, use_source_split)
    if use_source_split and present and not fixed:
        notes.append(f"the source's own split has no train part ({sorted(present)}): splits drawn at random")
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
    split second. Duplicates are collapsed or refused before splitting: this is the final guard."""
    order = {s: i for i, s in enumerate(SPLITS)}
    placed = sorted(((split, item) for split in SPLITS for item in splits[split]),
                    key=lambda p: (order[p[0]], p[1].id))
    pairs: list[dict] = []
    by_sha: dict[str, list[int]] = defaultdict(list)
    for k, (_, item) in enumerate(placed):
        by_sha[item.sha256].append(k)
    found = near_duplicates([item.phash for _, item in placed], [item.dhash for _, item in placed], distance)
    # Identical bytes are paired once, as identical.
    found.update({(i, j): "identical bytes" for group in by_sha.values() for i in group for j in group if i < j})
    for (i, j), kind in sorted(found.items()):
        (split_a, a), (split_b, b) = placed[i], placed[j]
        if split_a != split_b:
            pairs.append(_pair(split_a, a, split_b, b, kind, 0 if kind == "identical bytes" else
                               (a.phash ^ b.phash).bit_count()))
    pairs.sort(key=lambda p: (order[p["b"]["split"]], p["b"]["id"], order[p["a"]["split"]], p["a"]["id"]))
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
