"""The engine with one stream: each chunk and question runs at once, alone, on the stream's own cache
(and, on a GPU, from its own CUDA graphs). The API the single-stream front ends and benches use."""

import gc

from livesight.streaming.chunker import Chunk
from livesight.streaming.events import Event
from livesight.streaming.step_output import StepResult
from livesight.streaming.stream import Stream, VisionWork, Work, check_fits

__all__ = ["Session", "check_fits"]


class Session(Stream):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Python's full garbage collection walks every tracked object: about 400k once torch and
        # transformers are loaded, 40-180 ms, in the middle of whichever chunk triggers it. What
        # exists now (the model, the buffers) lives as long as the process; frozen, the collector skips it.
        gc.collect()
        gc.freeze()

    def run(self, work: Work) -> list[Event]:
        """Run a stream's work item by item -> its events."""
        try:
            item = next(work)
            while True:
                if isinstance(item, VisionWork):
                    result = self.adapter.encode_frames(item.frames, self.size, self.encoder)
                else:
                    result = StepResult.alone(self.stepper.forward(item))
                item = work.send(result)
        except StopIteration as done:
            return done.value

    def add_chunk(self, chunk: Chunk) -> list[Event]:
        """Encode, prune, prefill and narrate one chunk -> [errors..., caption?, metrics]."""
        return self.run(self.chunk_work(chunk))

    def ask(self, question: str, remember: bool = True, max_tokens: int | None = None) -> list[Event]:
        """Answer now (Stream.ask_work) -> [errors..., answer]."""
        return self.run(self.ask_work(question, remember, max_tokens))
