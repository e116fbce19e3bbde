"""The chat template's pieces a stream is built of, as token ids."""

import functools
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ChatIds:
    """The chat template's pieces a stream is built of, as token ids, and the ids that end a turn."""

    system_open: list[int]
    system_close: list[int]
    chunk_open: list[int]  # a user turn holding one chunk's video
    chunk_close: list[int]
    user_open: list[int]
    turn_close: list[int]
    assistant: list[int]  # the assistant's turn opened
    stop_ids: frozenset[int]
    encode: Callable[[str], list[int]]
    stamp: Callable[[float], str] | None = None  # the text a family writes before a frame pair at time t

    def system(self, prompt: str) -> list[int]:
        return self.system_open + self.encode(prompt) + self.system_close

    def chunk_opening(self, t: float) -> list[int]:
        """chunk_open, with the family's timestamp for time t (seconds) before the video where it writes
        one (Qwen3-VL: "<|im_start|>user\n<12.3 seconds><|vision_start|>")."""
        if self.stamp is None:
            return self.chunk_open
        turn = len(self.user_open)
        assert self.chunk_open[:turn] == self.user_open, "a chunk's turn opens as a user turn does"
        return self.user_open + self.encode(self.stamp(t)) + self.chunk_open[turn:]

    @property
    def chunk_open_bound(self) -> int:
        """The most tokens chunk_opening gives for any time up to 10^8 s (three years)."""
        return len(self.chunk_open) if self.stamp is None else len(self.chunk_opening(1e8 - 1))


def qwen_chat_ids(tok, stamp: Callable[[float], str] | None = None) -> ChatIds:
    """Qwen's ChatML, with a chunk's video between vision delimiters; stamp: a timestamp before it."""
    enc = functools.partial(tok.encode, add_special_tokens=False)
    stop = {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")}
    return ChatIds(enc("<|im_start|>system\n"), enc("<|im_end|>\n"), enc("<|im_start|>user\n<|vision_start|>"),
                   enc("<|vision_end|><|im_end|>\n"), enc("<|im_start|>user\n"), enc("<|im_end|>\n"),
                   enc("<|im_start|>assistant\n"), frozenset(i for i in stop if i is not None), enc, stamp)


def qwen3_vl_stamp(t: float) -> str:
    """Qwen3-VL's video prompt: each frame pair's time, the mean of its frames', to a tenth of a second."""
    return f"<{t:.1f} seconds>"


def smolvlm_chat_ids(tok) -> ChatIds:
    """SmolVLM2's template: "<|im_start|>" opens the conversation, each turn is "Role: ...<end_of_utterance>\\n",
    a frame's tokens sit between <fake_token_around_image><global-img> and <fake_token_around_image>."""
    enc = functools.partial(tok.encode, add_special_tokens=False)
    stop = {tok.convert_tokens_to_ids("<end_of_utterance>"), tok.eos_token_id}
    image_open, image_close = "<fake_token_around_image><global-img>", "<fake_token_around_image>"
    return ChatIds(enc("<|im_start|>System: "), enc("<end_of_utterance>\n"),
                   enc(f"User:{image_open}"), enc(f"{image_close}<end_of_utterance>\n"),
                   enc("User: "), enc("<end_of_utterance>\n"), enc("Assistant:"),
                   frozenset(i for i in stop if i is not None), enc)
