"""Pairs of 64-bit perceptual hashes within a Hamming distance, without comparing every pair; and the one
definition of a near-duplicate image, on two hashes.

Multi-index hashing: the hash is cut into distance+1 chunks; two hashes at most `distance` bits apart
differ in at most `distance` chunks, so they agree exactly on at least one (pigeonhole). Only hashes that
share a chunk value are compared, with numpy. On photos that is a small fraction of all pairs: ~4k images
take milliseconds, where comparing all pairs grows with the square of the dataset.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 2048  # rows compared at once: bounds each distance matrix to _BLOCK x group cells
_MIN_CHUNK_BITS = 4  # narrower chunks match almost everything: compare all pairs instead


def _pairs_among(hashes: np.ndarray, members: np.ndarray, distance: int) -> set[tuple[int, int]]:
    """(i, j), i < j, among the indices `members`, whose hashes are within `distance` bits."""
    members = np.sort(members)
    values = hashes[members]
    found: set[tuple[int, int]] = set()
    for start in range(0, len(members), _BLOCK):
        block = np.bitwise_count(values[start : start + _BLOCK, None] ^ values[None, :])
        rows, cols = np.nonzero(block <= distance)
        first, second = members[start + rows], members[cols]
        keep = first < second
        found.update(zip(first[keep].tolist(), second[keep].tolist()))
    return found


def near_pairs(hashes: np.ndarray | list[int], distance: int) -> set[tuple[int, int]]:
    """Index pairs (i < j) whose hashes differ in at most `distance` bits; none when distance < 0."""
    values = np.asarray(hashes, dtype=np.uint64)
    n = len(values)
    if distance < 0 or n < 2:
        return set()
    parts = distance + 1
    if 64 // parts < _MIN_CHUNK_BITS:
        return _pairs_among(values, np.arange(n), distance)
    found: set[tuple[int, int]] = set()
    shift = 0
    for k in range(parts):
        width = 64 // parts + (1 if k < 64 % parts else 0)
        keys = (values >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        shift += width
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        starts, ends = np.r_[0, bounds], np.r_[bounds, n]
        for g in np.flatnonzero(ends - starts > 1):
            found |= _pairs_among(values, order[starts[g] : ends[g]], distance)
    return found


def distance(a: int, b: int) -> int:
    """Bits in which two 64-bit hashes differ."""
    return (int(a) ^ int(b)).bit_count()


def near_duplicates(phashes: list[int], dhashes: list[int], max_distance: int) -> dict[tuple[int, int], str]:
    """(i, j) -> "near-duplicate (...)" for images whose phash AND dhash are within `max_distance` bits.

    One 64-bit hash alone matches unrelated pictures of a similar layout now and then (1 pair in 24k of
    the synthetic 37-breed set at phash distance 4); a re-encoded or resized copy stays within a few bits
    on both the DCT (phash) and the gradient (dhash) hashes, which unrelated pictures rarely do together.
    """
    found = {}
    for i, j in near_pairs(phashes, max_distance):
        p, d = distance(phashes[i], phashes[j]), distance(dhashes[i], dhashes[j])
        if d <= max_distance:
            found[(i, j)] = f"near-duplicate (phash distance {p}, dhash distance {d})"
    return found
