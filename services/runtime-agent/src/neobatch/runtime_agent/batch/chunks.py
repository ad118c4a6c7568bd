"""How a batch spread over several machines is cut into chunks and shared out. Pure: no I/O.

A chunk is a range of input lines `[first, end)` with a `cursor`: lines before it have been
handed to the machine run holding the chunk, lines from it on are unstarted. A run reserves a
slice of lines at a time (moving the cursor with a compare-and-set), so another run can take
the unstarted tail (`steal_split`) without ever taking a line already sent.

Sizes (docs/design.md "One batch, many machines"):
- A lost machine repeats only what was in flight: results are checkpointed per line, and a
  freed chunk is re-run from its first line skipping every line with a result. So the chunk
  size does not bound the loss; it bounds how much work a machine joining late finds without
  stealing, and how many claims a batch costs. `CHUNKS_PER_MACHINE` chunks per requested
  machine, each between `MIN_CHUNK_LINES` and `MAX_CHUNK_LINES` lines.
- The tail of the batch is shared by stealing halves of the unstarted remainder, down to a
  slice: machines finish within one slice's time of each other (a slice is what one machine
  has in flight at once, `slice_lines`).
- Shared-prefix groups stay together: a cut near a chunk's target end moves forward (at most
  `CUT_SLACK` of a chunk) to the first line whose prefix key differs from the line before, so
  a run of requests with the same leading text is not split between machines.
"""

from __future__ import annotations

from collections.abc import Sequence

CHUNKS_PER_MACHINE = 4
MIN_CHUNK_LINES = 8
MAX_CHUNK_LINES = 5000
# How far (a fraction of the chunk size) a cut may move to fall between two prefix groups.
CUT_SLACK = 0.25
# A slice: waves of requests reserved at once, at most this many lines, at least this many.
SLICE_WAVES = 8
MAX_SLICE_LINES = 1024
MIN_SLICE_LINES = 8
# The smallest unstarted remainder worth stealing half of.
MIN_STEAL_LINES = 2


def chunk_lines(lines: int, replicas: int) -> int:
    """The target size of a chunk of a batch of `lines` requested on `replicas` machines."""
    wanted = -(-max(1, lines) // (max(1, replicas) * CHUNKS_PER_MACHINE))
    return max(MIN_CHUNK_LINES, min(MAX_CHUNK_LINES, wanted))


def plan_chunks(keys: Sequence[int], replicas: int) -> list[tuple[int, int]]:
    """The `[first, end)` ranges covering every line, given each line's prefix key (in input
    order; any value for a blank line, the previous line's is best)."""
    lines = len(keys)
    if lines == 0:
        return []
    size = chunk_lines(lines, replicas)
    slack = int(size * CUT_SLACK)
    ranges: list[tuple[int, int]] = []
    first = 0
    while first < lines:
        cut = first + size
        if cut + slack >= lines:  # the rest is within the slack: it stays with this chunk
            ranges.append((first, lines))
            break
        # The first line of a new prefix group at or after the target, within the slack.
        moved = next(
            (at for at in range(cut, min(lines, cut + slack + 1)) if keys[at] != keys[at - 1]),
            cut,
        )
        if lines - moved < MIN_CHUNK_LINES:
            moved = lines  # no tiny last chunk
        ranges.append((first, moved))
        first = moved
    return ranges


def slice_lines(concurrency: int) -> int:
    """Lines a run reserves at once: `SLICE_WAVES` times what it can have in flight, at least
    `MIN_SLICE_LINES`, bounded. A reservation is a database write that dispatch waits for:
    a slice must take longer to send than the write takes (on a busy database ~100 ms,
    against ~20 ms for one wave of short requests)."""
    return max(MIN_SLICE_LINES, min(MAX_SLICE_LINES, SLICE_WAVES * concurrency))


def steal_split(cursor: int, end: int) -> int | None:
    """Where to cut a chunk's unstarted lines `[cursor, end)`: the thief takes `[split, end)`,
    the holder keeps the first half; None when too little is left to be worth it."""
    left = end - cursor
    if left < MIN_STEAL_LINES:
        return None
    return cursor + (left + 1) // 2


def pick_victim(chunks: Sequence[tuple[str, int, int]]) -> str | None:
    """Of (chunk id, cursor, end) held by other runs, the one with the most unstarted lines
    (ties: the lowest id), if any has enough to split."""
    able = [
        (-(end - cursor), chunk_id) for chunk_id, cursor, end in chunks if steal_split(cursor, end)
    ]
    return min(able)[1] if able else None
