"""A question's query vectors, which score the offloaded blocks (kvcache/blocks.py): the question's tokens
run once with every layer's queries captured, then the cache is rolled back."""

import torch

from livesight.kernels import unrotate
from livesight.kvcache import Segment
from livesight.models.text import capture_queries
from livesight.streaming.stepper import CacheStepper


def probe(stepper: CacheStepper, question: torch.Tensor) -> torch.Tensor:
    """question: (n, hidden) embeddings of the tokens the caller will run next -> their queries before
    rotary, (L, Hq, n, D); the cache is left as it was."""
    cache = stepper.cache
    builder = stepper.builder()
    builder.text(question, Segment.TEXT, 0.0)
    embeds, table = builder.build()
    length = cache.length
    cache.begin_step()
    with capture_queries() as captured:
        stepper.adapter.forward(embeds, table.pos, cache)
    cache.rollback(length)
    queries = torch.stack([captured[layer] for layer in range(len(captured))])
    return unrotate(queries, table.pos, cache.inv_freq, cache.rope_axes)
