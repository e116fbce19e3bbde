"""The API's request bodies (pydantic). Ranges are checked where the CLI's are (streaming/options.py),
so a bad number gets the same message on every front end, naming the field."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_QUESTION_CHARS = 4000


class StreamCreate(BaseModel):
    """A new stream: its source and the settings it changes from the server's defaults."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="rtsp://…, http(s)://…, synthetic[:SCENE], or a file under --media-root")
    seconds: float | None = Field(None, description="read at most this much of the source (default: all of it; "
                                                    "a synthetic scene runs 30 s)")
    realtime: bool = Field(True, description="a file is paced at real time, as a camera (else as fast as it goes)")
    fps: float | None = None
    vision_window: float | None = Field(None, description="seconds of video kept in the cache")
    narrate: bool | None = None
    narrate_tokens: int | None = None
    answer_tokens: int | None = None
    compression: bool | None = Field(None, description="encoder reuse and token pruning")
    retrieval: bool | None = Field(None, description="offload evicted video, bring it back for questions")
    retrieve_top_k: int | None = None

    def overrides(self) -> dict[str, Any]:
        """The engine settings given, by the CLI flags' names (options.build_config)."""
        given = {"fps": self.fps, "vision_window": self.vision_window, "narrate": self.narrate,
                 "narrate_tokens": self.narrate_tokens, "answer_tokens": self.answer_tokens,
                 "retrieve": self.retrieval, "retrieve_top_k": self.retrieve_top_k,
                 "reuse": self.compression, "prune": self.compression}
        return {k: v for k, v in given.items() if v is not None}


# what a message calls each setting: the body's field, not the CLI's flag
FIELD_NAMES = {"fps": "fps", "vision_window": "vision_window", "narrate": "narrate", "narrate_tokens": "narrate_tokens",
               "answer_tokens": "answer_tokens", "retrieve": "retrieval", "retrieve_top_k": "retrieve_top_k",
               "reuse": "compression", "prune": "compression"}


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=MAX_QUESTION_CHARS)
    max_tokens: int | None = Field(None, ge=1, le=4096)


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The message's text (OpenAI's content parts: the "text" ones, joined)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")


class ChatRequest(BaseModel):
    """OpenAI's chat completion request. The stream asked is named by `model` ("livesight/ID") or by the
    extra field `stream_id`; the question is the last user message. Other OpenAI fields are accepted
    and ignored (decoding is greedy)."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    stream_id: str | None = None
