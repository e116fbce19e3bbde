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

    def system(self, prompt: str) -> list[int]:
        return self.system_open + self.encode(prompt) + self.system_close


def qwen_chat_ids(tok) -> ChatIds:
    """Qwen's ChatML, with a chunk's video between vision delimiters."""
    enc = functools.partial(tok.encode, add_special_tokens=False)
    stop = {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")}
    return ChatIds(enc("<|im_start|>system\n"), enc("<|im_end|>\n"), enc("<|im_start|>user\n<|vision_start|>"),
                   enc("<|vision_end|><|im_end|>\n"), enc("<|im_start|>user\n"), enc("<|im_end|>\n"),
                   enc("<|im_start|>assistant\n"), frozenset(i for i in stop if i is not None), enc)


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
