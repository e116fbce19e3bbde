"""Write a StreamingBench-format set over synthetic videos, to measure the evaluator's throughput
where the real data is not at hand (its answers mean nothing; its shape is StreamingBench's: five
multiple-choice questions per video at spread time stamps, the official prompt, HH:MM:SS stamps).

    python scripts/synthetic_streamingbench.py OUT --videos 4 --seconds 90 [--questions 5] [--size 640x360] [--fps 10]
    livesight eval streamingbench --data OUT/questions.json --videos OUT/videos --out OUT/results ...
"""

import argparse
import json
import os

from livesight.vision.synthetic import SCENES, write_video

TASKS = ["Object Perception", "Attribute Perception", "Counting", "Action Perception", "Clips Summarize"]
SHARES = (0.11, 0.33, 0.55, 0.77, 0.98)  # where in the video the five questions fall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=90)
    parser.add_argument("--questions", type=int, default=len(SHARES), choices=range(1, len(SHARES) + 1),
                        help="questions per video, at the last of the five spread time stamps (default 5)")
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--fps", type=float, default=10.0)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    os.makedirs(os.path.join(args.out, "videos"), exist_ok=True)
    entries = []
    scenes = [s for s in SCENES if s != "static"]
    for v in range(args.videos):
        name = f"sample_{v}.mp4"
        write_video(os.path.join(args.out, "videos", name), args.seconds, args.fps, width, height,
                    scenes[v % len(scenes)])
        for k, (share, task) in enumerate(zip(SHARES[len(SHARES) - args.questions:], TASKS)):
            t = int(share * args.seconds)
            entries.append({"video_path": f"./videos/{name}", "questions": [{
                "task_type": task, "question": f"What does the scene show at this moment ({k})?",
                "time_stamp": f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}", "answer": "ABCD"[k % 4],
                "options": ["A. A ball moving left.", "B. A box standing still.", "C. A clock ticking.",
                            "D. Nothing changes."]}]})
    with open(os.path.join(args.out, "questions.json"), "w") as f:
        json.dump(entries, f, indent=1)
    print(f"wrote {args.videos} videos of {args.seconds} s and {len(entries)} questions to {args.out}")


if __name__ == "__main__":
    main()
