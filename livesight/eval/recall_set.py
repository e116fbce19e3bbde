"""The recall set: videos of the synthetic world (vision/world.py) and four-option questions about them
at ages from the present to the whole stream (vision/world_tasks.py), as a VQA JSON Lines file that
`livesight eval vqa` reads. Each question's task is its age bucket, so the evaluator's accuracy per
task is accuracy by age; the file's rows also carry `age_s`, `fact_second` and what was asked.

    python -m livesight.eval.recall_set OUT --videos 4 --seconds 600 --per-video 40 [--seed 0]
    livesight eval vqa --data OUT/questions.jsonl --videos OUT/videos --out OUT/results --model …
    livesight eval streamingbench --data OUT/streamingbench.json --videos OUT/videos …  (the same questions)
"""

import argparse
import json
import os

import numpy as np

from livesight.vision.synthetic import write_video
from livesight.vision.world import World
from livesight.vision.world_tasks import questions_at

# (from, to, name): ages in seconds; the first is the default 16-s vision window
BUCKETS = ((0, 16, "age 0-16 s"), (16, 120, "age 16 s-2 min"), (120, 600, "age 2-10 min"),
           (600, 3600, "age 10-60 min"))


def bucket(age_s: float) -> str:
    return next(name for low, high, name in BUCKETS if low <= age_s < high) if age_s < BUCKETS[-1][1] else \
        f"age {BUCKETS[-1][1] // 60}+ min"


def write_set(folder: str, videos: int = 4, seconds: int = 600, per_video: int = 40, seed: int = 0,
              fps: float = 2.0, size: tuple[int, int] = (640, 360)) -> dict:
    """Write folder/videos/world_S.mp4 (+ .events.jsonl) and folder/questions.jsonl -> counts by bucket.
    Questions are asked at whole seconds spread over each video's second half; their ages cycle through
    the buckets that fit before the ask (uniform within one), the nearest second holding a fact taken."""
    os.makedirs(os.path.join(folder, "videos"), exist_ok=True)
    rng, rows = np.random.default_rng(seed), []
    for v in range(videos):
        world, name = World(seed + v), f"world_{seed + v}.mp4"
        write_video(os.path.join(folder, "videos", name), seconds, fps, *size, frame_at=world.render)
        with open(os.path.join(folder, "videos", name.replace(".mp4", ".events.jsonl")), "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in world.events(0, seconds))
        asks = np.sort(rng.integers(seconds // 2, seconds + 1, per_video))
        for k, ask in enumerate(asks):
            fits = [b for b in BUCKETS if b[0] < ask - 1]
            low, high, _ = fits[k % len(fits)]
            age = float(rng.uniform(low, min(high, ask - 1)))
            for q in questions_at(world, int(ask), [age], rng, search=min(30, max(1, int(age / 4)))):
                rows.append({"video": name, "time": int(ask), "question": q["question"], "options": q["options"],
                             "answer": q["answer"], "id": f"w{seed + v}-{k}", "task": bucket(q["age_s"]),
                             "age_s": q["age_s"], "fact_second": q["fact_second"], "asked": q["task"]})
    with open(os.path.join(folder, "questions.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    with open(os.path.join(folder, "streamingbench.json"), "w") as f:
        json.dump(streamingbench_entries(rows), f, indent=1)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["task"]] = counts.get(row["task"], 0) + 1
    return counts


def streamingbench_entries(rows: list[dict]) -> list[dict]:
    """The same questions in StreamingBench's GitHub JSON layout (an entry per video, its questions with
    task_type, time_stamp HH:MM:SS, lettered options and the answer's letter), for `livesight eval
    streamingbench`."""
    entries: dict[str, list] = {}
    for row in rows:
        h, rest = divmod(int(row["time"]), 3600)
        entries.setdefault(row["video"], []).append({
            "task_type": row["task"], "question": row["question"],
            "time_stamp": f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}",
            "options": [f"{letter}. {o}" for letter, o in zip("ABCD", row["options"])], "answer": row["answer"]})
    return [{"video_path": video, "questions": questions} for video, questions in entries.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a recall set of world videos and questions by age")
    parser.add_argument("out")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--per-video", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = write_set(args.out, args.videos, args.seconds, args.per_video, args.seed)
    print(f"wrote {args.videos} videos of {args.seconds} s and {sum(counts.values())} questions to {args.out}: "
          + ", ".join(f"{name} {n}" for name, n in counts.items()))


if __name__ == "__main__":
    main()
