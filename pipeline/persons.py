"""Several persons in one video's store group: the row arrays of each person, stacked.

A video without provided crops can show several people. The face and reliability stores keep one
group per video (so leases, fingerprints, `verify` and DVC see one unit of work, as for every other
store) and hold every followed person in it: each person gets a full set of rows on the video's
frame grid (rows of frames where that person is not seen are invalid / face 0), the persons'
blocks follow each other (person 0's N rows, then person 1's, ...), and a `person` [P x N] int
column says whose row each is. A group without `person` (provided crops, stores written before
persons existed) is person 0 alone, so one-person readers need no change: `select_person(group, 0)`.

Row arrays are the arrays on the `t0`/`t1` axis; arrays on another grid (`<p>`, `<p>_t0`, `<p>_t1`,
such as reliability's `vad`) belong to the whole video and are kept as they are for every person.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

PERSON = "person"


def _other_grid(name: str, group: Mapping[str, np.ndarray]) -> bool:
    """`name` is on a grid of its own (`<p>_t0` exists for `name` or its prefix), not the row axis."""
    if name in ("t0", "t1"):
        return False
    return any(f"{p}_t0" in group for p in (name, name.rsplit("_", 1)[0]) if p)


def row_arrays(group: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the arrays with one entry per row (the `t0` axis)."""
    n = len(group["t0"]) if "t0" in group else None
    return [k for k, v in group.items() if n is not None and not _other_grid(k, group) and len(v) == n]


def person_ids(group: Mapping[str, np.ndarray] | None) -> list[int]:
    """The persons of a group, ascending ([0] for a group without a `person` column or no group)."""
    if group is None or PERSON not in group or len(group[PERSON]) == 0:
        return [0]
    return [int(p) for p in np.unique(np.asarray(group[PERSON]))]


def select_person(group: Mapping[str, np.ndarray], person: int) -> dict[str, np.ndarray]:
    """The group as a one-person group: `person`'s rows of every row array, the rest unchanged
    (the `person` column itself is dropped). Raises KeyError for a person the group does not hold."""
    if PERSON not in group:
        if person != 0:
            raise KeyError(f"person {person}: the group holds one person (0)")
        return dict(group)
    keep = np.asarray(group[PERSON]) == person
    if not keep.any():
        raise KeyError(f"person {person}: not in this group (persons {person_ids(group)})")
    rows = set(row_arrays(group))
    return {k: (np.asarray(v)[keep] if k in rows else v) for k, v in group.items() if k != PERSON}


def stack_persons(rows: Mapping[str, np.ndarray], persons: int) -> dict[str, np.ndarray]:
    """One person's row arrays (`rows`, all of one length N) repeated for `persons` persons
    (person-major: P x N rows), plus the `person` column. Arrays on other grids are the caller's."""
    p = max(1, int(persons))
    lengths = {len(v) for v in rows.values()}
    if len(lengths) > 1:
        raise ValueError(f"stack_persons: row arrays of different lengths {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    out = {k: np.concatenate([np.asarray(v)] * p) for k, v in rows.items()}
    out[PERSON] = np.repeat(np.arange(p, dtype=np.int32), n)
    return out


def by_frame(tables: Mapping[int, Mapping[str, np.ndarray]], after: str = "time") -> dict[str, np.ndarray]:
    """Per-person tables (each one row per frame, all of one length N) as one table of P x N rows,
    ordered by frame, then person, with a `person` column right after column `after`. A column
    missing for a person is NaN in that person's rows."""
    persons = sorted(tables)
    names: list[str] = list(dict.fromkeys(k for p in persons for k in tables[p]))
    n = len(next(iter(tables[persons[0]].values()))) if persons and tables[persons[0]] else 0
    order = np.arange(n * len(persons)).reshape(len(persons), n).T.ravel()  # frame-major
    out: dict[str, np.ndarray] = {}
    for name in names:
        cols = [np.asarray(tables[p][name]) if name in tables[p] else np.full(n, np.nan) for p in persons]
        out[name] = np.concatenate(cols)[order] if cols else np.zeros(0)
        if name == after:
            out[PERSON] = np.repeat(np.asarray(persons, np.int64)[None, :], n, 0).ravel()
    if PERSON not in out:
        out[PERSON] = np.repeat(np.asarray(persons, np.int64)[None, :], n, 0).ravel()
    return out
