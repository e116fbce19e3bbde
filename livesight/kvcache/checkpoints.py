"""Copies of a stream's fixed-size state taken before each step, by the cache length the step started at, so
that decode steps taken back past a stop token (or a probe rolled back) can return to it: the last `keep`.
A hybrid model's linear-attention state (linear.py) and a head-wise cache's streaming heads (headwise.py)
keep theirs here."""


class Checkpoints:
    def __init__(self, keep: int, what: str):
        """what: the state's name, for the error when a step is too old to go back to."""
        self.keep, self.what = keep, what
        self._by_length: dict = {}  # cache length -> copy, oldest first

    def __len__(self) -> int:
        return len(self._by_length)

    def put(self, length: int, state) -> None:
        """`state` as it is before a step that starts at cache length `length`."""
        self._by_length.pop(length, None)
        self._by_length[length] = state
        while len(self._by_length) > self.keep:
            self._by_length.pop(next(iter(self._by_length)))

    def back_to(self, length: int):
        """The copy taken before the step that started at `length`; later ones are dropped. Raises if that step
        is older than the last `keep`, or the cache was rearranged since."""
        if length not in self._by_length:
            raise RuntimeError(f"no {self.what} kept for cache length {length} (kept: {sorted(self._by_length)})")
        state = self._by_length[length]
        for later in [n for n in self._by_length if n >= length]:
            del self._by_length[later]
        return state

    def clear(self) -> None:
        self._by_length.clear()
