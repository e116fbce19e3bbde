"""Two web-UI runs at once on a GPU (tiny-random, CUDA graphs captured in their threads, steps
under the registry's lock): both stream a clip to the end and answer with retrieved moments."""

import sys
import tempfile
import time

from livesight.app.live import LiveRun, RunRegistry
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.config import SessionConfig
from livesight.models.loader import load_model
from livesight.streaming.config import RetrievalConfig
from livesight.vision.synthetic import write_video

model = sys.argv[1] if len(sys.argv) > 1 else "tiny-random"
adapter = QwenVLAdapter(load_model(model, "cuda"))
registry = RunRegistry(2)
config = SessionConfig(vision_window_s=2.0, narrate_tokens=8, retrieval=RetrievalConfig(top_k=2))
runs = {}
for scene in ("quiet", "busy"):
    path = f"{tempfile.mkdtemp()}/{scene}.mp4"
    write_video(path, 10.0, 10.0, 640, 360, scene)
    runs[scene] = registry.start(scene, lambda p=path: LiveRun(adapter, config, p, realtime=False, lock=registry.lock))
deadline = time.monotonic() + 300
while any(r.state in ("starting", "running") for r in runs.values()) and time.monotonic() < deadline:
    time.sleep(0.2)
for scene, run in runs.items():
    events, history = run.snapshot()
    (reply,) = run.ask("what happened at the start?")
    print(scene, run.state, "chunks", len(history), "captions", sum(e.type == "caption" for e in events),
          "errors", [e.text for e in events if e.type == "error"], "| reply", reply.type,
          reply.data.get("retrieved"), "ttft", reply.data.get("ttft_ms"),
          "| p50 chunk ms", sorted(h["prefill_ms"] + h["decode_ms"] + h["vision_ms"] for h in history)[len(history) // 2])
    registry.close(scene)
ok = all(r.state == "ended" for r in runs.values())
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
