"""CUDA-graph capture and replay of a fixed-shape function: one launch instead of hundreds of
small kernels, each of which would otherwise wait on the host (the vision tower's blocks, the
language model's layers)."""

import contextlib

import torch


def on_device(device) -> contextlib.AbstractContextManager:
    """`device`, a GPU, as the thread's current device within the block (nothing for the CPU). CUDA's
    current device is per thread and starts as the first GPU, and streams, events, graphs, Triton's
    launches and the memory counters default to it: work for cuda:1 must run with cuda:1 current."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class GraphReplay:
    """fn(*inputs) captured once in a CUDA graph; calling copies new inputs in and replays it.

    fn must be a pure function of its tensor inputs and of buffers that live as long as the graph.
    pool: a memory pool shared with other graphs that never replay concurrently (saves memory);
    the output then lives only until another graph of the pool replays."""

    def __init__(self, fn, inputs: list[torch.Tensor], pool=None):
        self.inputs = [x.clone() for x in inputs]
        with on_device(self.inputs[0].device):  # captured where its inputs live, whatever is current
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn(*self.inputs)  # warm-up outside the graph: library handles, allocator pools
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            # its own stream: torch.cuda.graph's default is one stream per process, made on whichever GPU
            # captured first, and entering it moves the current device there
            with torch.cuda.graph(self.graph, pool=pool, stream=side):
                self.output = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor):
        with on_device(self.inputs[0].device):
            for buffer, x in zip(self.inputs, inputs):
                buffer.copy_(x)
            self.graph.replay()
        return self.output
