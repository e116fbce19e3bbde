"""The results folder: records appended as they are made, read back on a rerun, merged at the end.

OUT/results.jsonl          one JSON line per question (a single process appends here)
OUT/results.rank{R}.jsonl  what process R of several appends, merged into results.jsonl at the end
OUT/run.json               what produced the results; a rerun with other settings is refused

Each line goes out in one write and is fsynced, so a run killed at any moment leaves whole lines
and at most one partial last line, which the next run cuts off (that question is asked again).
A record is never written twice: a rerun skips every id already in any results file (with
--retry-errors it asks the error lines' questions again, and the merge keeps their answers).
"""

import glob
import json
import os

from livesight.errors import InputError

RESULTS = "results.jsonl"


def read_records(path: str) -> list[dict]:
    """The whole lines of a results file (a partial last line is left out)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    records = []
    for line in data.split(b"\n")[:-1]:  # the last piece is empty, or a partial line
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a kill in an older layout: asked again
    return records


class ResultsLog:
    def __init__(self, folder: str, rank: int = 0, world: int = 1):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.rank, self.world = folder, rank, world
        self.path = os.path.join(folder, RESULTS if world == 1 else f"results.rank{rank}.jsonl")
        self._file = None

    def files(self) -> list[str]:
        ranks = sorted(glob.glob(os.path.join(self.folder, "results.rank*.jsonl")))
        return [os.path.join(self.folder, RESULTS)] + ranks

    def done(self) -> dict[str, dict]:
        """Every record already made, by id: the first answer, else the last error (a retried
        question's error line gives way to its answer when the files are merged)."""
        records: dict[str, dict] = {}
        for path in self.files():
            for record in read_records(path):
                old = records.get(record["id"])
                if old is None or "error" in old:
                    records[record["id"]] = record
        return records

    def check_run(self, identity: dict) -> None:
        """Refuse to mix results of different settings in one folder (rank 0 writes run.json)."""
        path = os.path.join(self.folder, "run.json")
        if os.path.exists(path):
            with open(path) as f:
                previous = json.load(f)
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            if changed:
                raise InputError(f"{self.folder} holds results made with other settings ({', '.join(changed)} "
                                 f"differ): resume with the same settings, or give another --out")
        elif self.rank == 0:
            _atomic_write(path, json.dumps(identity, indent=2) + "\n")

    def append(self, record: dict) -> None:
        if self._file is None:
            self._repair()
            self._file = open(self.path, "ab")
        self._file.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def _repair(self) -> None:
        """Cut a partial last line (a kill mid-write) so the next line starts clean."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def merge(self, order: dict[str, int]) -> list[dict]:
        """All records, deduplicated and sorted in data order, into results.jsonl (atomically);
        the per-process files are removed after. Run by one process once the others are done."""
        self.close()
        records = sorted(self.done().values(), key=lambda r: (order.get(r["id"], len(order)), r["id"]))
        _atomic_write(os.path.join(self.folder, RESULTS),
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        for path in self.files()[1:]:
            os.remove(path)
        return records


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
