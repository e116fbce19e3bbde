"""Which adapter serves a loaded model: read off its config's model_type, so entry points never name a
family."""

from livesight.errors import InputError
from livesight.models.loader import SMOLLM2, load_model
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.models.qwen3_5 import Qwen3_5Adapter
from livesight.models.qwen3_vl import Qwen3VLAdapter
from livesight.models.smolvlm import SmolVLMAdapter
from livesight.models.text import TextAdapter

# The adapter of each model family, by the loaded config's model_type: a new family is one more entry.
ADAPTERS: dict[str, type[TextAdapter]] = {"qwen2_5_vl": QwenVLAdapter, "qwen3_vl": Qwen3VLAdapter,
                                          "qwen3_5": Qwen3_5Adapter, "smolvlm": SmolVLMAdapter, "llama": TextAdapter}


def load_adapter(spec: str, device: str, video: bool = True) -> TextAdapter:
    """The model `spec` names (see load_model: same specs, same InputError) on `device`, in its
    family's adapter. The family is read off what was loaded, not chosen by the caller, so entry
    points never name one. video: the caller streams video, so a text-only model is refused (before
    loading it, where the spec says so)."""
    text_only = (f"--model {spec} is a text-only model: watching video needs a vision-language model "
                 f"(toy-vlm, tiny-random, random-7b, random-qwen3-vl-8b, random-qwen3.5-9b, random-smolvlm2-2.2b, "
                 f"or a folder or hub id of a Qwen2.5-VL, Qwen3-VL, Qwen3.5 or SmolVLM2 checkpoint)")
    if video and spec == SMOLLM2:
        raise InputError(text_only)
    loaded = load_model(spec, device)
    model_type = loaded.model.config.model_type
    assert model_type in ADAPTERS, f"load_model gave a {model_type} model, which has no entry in ADAPTERS"
    adapter = ADAPTERS[model_type](loaded)
    if video and not adapter.sees_video:
        raise InputError(text_only)
    return adapter
