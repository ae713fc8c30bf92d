"""Class names as the instruction will carry them: one canonical name per source name (two source names on
one canonical name is an error), only characters the instruction can carry, no two names so close that one
is likely a typo of the other, and at least two classes. Every problem is raised at once, before any image
is read."""

from __future__ import annotations

import itertools
import re
import unicodedata

from petqlora.data.dataset import canonical_class_name
from petqlora.data.entries import Listing, PrepareDataError, listed

# Unicode categories a source name may not hold: control characters (newline, tab), format characters
# (zero-width joiners, direction marks), surrogates, private-use, unassigned, line and paragraph separators.
# Canonicalisation would quietly turn some into spaces; in a label they mean a broken export, not a breed.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Characters of a canonical name the instruction cannot carry, and why.
_FORBIDDEN_CHARACTERS = {
    ",": "a comma, which separates the classes in the instruction's list",
    "<": "'<', which can spell a special token (<eos>, <|image|>) in the prompt and the answer",
    ">": "'>', which can spell a special token (<eos>, <|image|>) in the prompt and the answer",
}
_SHORTEST_COMPARED = 4  # below this many letters, one edit makes another word (cat, bat): not compared


def first_use(source: Listing) -> dict[str, str]:
    """Source class name -> where it first appears (the row or file of its first entry)."""
    where: dict[str, str] = {}
    for entry in source.entries:
        if entry.label is not None:
            where.setdefault(entry.label, entry.where or entry.source)
    for name in source.declared:
        where.setdefault(name, "declared by the source (a folder or a ClassLabel name)")
    return where


def _character_problems(name: str, where: str) -> list[str]:
    problems = []
    odd = sorted({c for c in name if unicodedata.category(c) in _FORBIDDEN_CATEGORIES})
    if odd:
        shown = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, 'control')}" for c in odd)
        problems.append(f"class name {name!r} ({where}) holds {shown}: a label is one line of visible text; "
                        "fix the label in the source (a broken CSV quote often causes this)")
    canonical = canonical_class_name(name)
    for char, why in _FORBIDDEN_CHARACTERS.items():
        if char in canonical:
            suggestion = " ".join(canonical.replace(char, " ").split())
            problems.append(f"class name {name!r} ({where}) holds {why}; rename the class in the source "
                            f"without it (e.g. {suggestion!r})")
    return problems


def _osa_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) from a to b: a typo is one edit."""
    rows = [list(range(len(b) + 1))]
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], rows[-2][j - 2] + 1)
        rows = rows[-1:] + [row]
    return rows[-1][len(b)]


def similar_names(names: list[str], min_distance: int) -> list[tuple[str, str, int]]:
    """Pairs of canonical names fewer than `min_distance` edits apart, spaces ignored ('pit bull' and
    'pitbull' are one name). Names that differ only in their numbers ('type 1', 'type 2') are different
    by design; names shorter than 4 letters are not compared."""
    pairs = []
    for a, b in itertools.combinations(sorted(set(names)), 2):
        ka, kb = a.replace(" ", ""), b.replace(" ", "")
        if min(len(ka), len(kb)) < _SHORTEST_COMPARED or abs(len(ka) - len(kb)) >= min_distance:
            continue
        if re.sub(r"\d+", "#", ka) == re.sub(r"\d+", "#", kb) and ka != kb:
            continue
        distance = _osa_distance(ka, kb)
        if distance < min_distance:
            pairs.append((a, b, distance))
    return pairs


def class_names(source: Listing, min_distance: int) -> tuple[dict[str, str], dict[str, str]]:
    """(source name -> canonical name, canonical name -> source name), after checking every name."""
    canonical: dict[str, str] = {}
    source_of: dict[str, str] = {}
    where = first_use(source)
    problems: list[str] = []
    for name in sorted({*source.declared, *(e.label for e in source.entries if e.label is not None)}):
        try:
            key = canonical_class_name(name)
        except ValueError:
            continue  # entries with this label are reported one by one as bad input
        problems += _character_problems(name, where[name])
        if key in source_of:
            problems.append(f"class names {source_of[key]!r} and {name!r} both become {key!r}; rename one of "
                            "them in the source, or merge their images under one name")
            continue
        canonical[name], source_of[key] = key, name
    for a, b, distance in similar_names(list(source_of), min_distance) if min_distance > 0 else []:
        problems.append(
            f"class names {source_of[a]!r} ({where[source_of[a]]}) and {source_of[b]!r} "
            f"({where[source_of[b]]}) are {distance} edit(s) apart: likely one class under a typo; rename one "
            "to the other in the source, or pass min_class_name_distance=0 if they are different classes")
    if problems:
        raise PrepareDataError(f"{len(problems)} problem(s) with the class names:\n" + listed(problems))
    return canonical, source_of


def require_two_classes(classes: list[str], when: str) -> None:
    """A classifier needs at least two classes to choose between."""
    if len(classes) < 2:
        raise PrepareDataError(
            f"{when} the dataset has {len(classes)} class(es) ({', '.join(map(repr, classes)) or 'none'}); a "
            "classifier needs at least two: add images of another class to the source"
        )
