"""CLIP image and per-token text features (DFN5B ViT-H/14-384 through open_clip).

MMAudio conditions on (a) the L2-normalised projected image embedding of each 8 fps frame
and (b) the last hidden states of the text transformer, one L2-normalised 1024-d vector per
token (no pooling, no text projection). The model is built with open_clip on the meta
device and the checkpoint tensors are assigned into it, so loading the 986M-parameter model
costs one read of the file and no random initialisation.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Mapping, Sequence

import gin
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from mmgin import weights
from mmgin.modules import freeze, load_strict, seeded_init
from mmgin.vision.clip_forms import use_gemm_forms

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_MODEL_NAME = "ViT-H-14-378-quickgelu"
CLIP_HF_REPOS = ("apple/DFN5B-CLIP-ViT-H-14-384", "apple/DFN5B-CLIP-ViT-H-14-378")
CLIP_WEIGHTS_FILE = "open_clip_pytorch_model.bin"
CLIP_WEIGHTS = "clip_dfn5b"  # mmgin.weights names
EMPTY_STRING_WEIGHTS = "empty_string"
CLIP_TINY_SEED = 8

# A tiny open_clip config with the full model's interface: 1024-d image embeddings and
# 1024-wide per-token text features (the text width is the feature width), 77 tokens, the
# same tokenizer and vocabulary, 384 px frames (9x9 patches of 42 px); one narrow layer each.
TINY_CLIP_CONFIG = {
    "embed_dim": 1024,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 378, "layers": 1, "width": 64, "head_width": 32, "patch_size": 42},
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 1024,
        "heads": 16,
        "layers": 1,
        "mlp_ratio": 1.0,
    },
}


def _build_open_clip(size: str) -> open_clip.CLIP:
    """The open_clip module of ``size`` with meta tensors (no memory, no initialisation).

    'full' is open_clip's built-in ViT-H-14-378-quickgelu config, the config of
    apple/DFN5B-CLIP-ViT-H-14-384 (what ``open_clip.create_model`` builds for that name).
    """
    configs = {"full": open_clip.get_model_config(CLIP_MODEL_NAME), "tiny": TINY_CLIP_CONFIG}
    if size not in configs:
        raise ValueError(f"unknown CLIP size {size!r}; choose from {sorted(configs)}")
    with torch.device("meta"):
        return open_clip.CLIP(**copy.deepcopy(configs[size]))


def _hf_cached_checkpoint() -> Path | None:
    """The DFN5B checkpoint in the local Hugging Face cache, if present (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = os.environ.get("HF_HUB_CACHE")  # read now, not at huggingface_hub import
    for repo in CLIP_HF_REPOS:
        found = try_to_load_from_cache(repo, CLIP_WEIGHTS_FILE, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def default_clip_checkpoint() -> Path:
    """open_clip_pytorch_model.bin in the weights directory if present, else the Hugging Face
    cache copy."""
    try:
        return weights.resolve(CLIP_WEIGHTS)
    except weights.MissingWeightsError as missing:
        cached = _hf_cached_checkpoint()
        if cached is None:
            raise weights.MissingWeightsError(
                f"{missing}\n  (also looked in the Hugging Face cache for {CLIP_HF_REPOS[0]}; "
                "nothing is downloaded at run time)"
            ) from None
        return cached


def load_open_clip_state_dict(path: str | os.PathLike) -> dict:
    """An open_clip checkpoint as a plain state dict (unwraps 'state_dict' and 'module.')."""
    state = weights.load(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: expected an open_clip state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


class ClipEncoder(nn.Module):
    """Frame features ``encode_frames`` and per-token caption features ``encode_text``.

    ``frame_batch`` bounds how many frames go through the image tower at once (memory vs
    speed); it does not change the result.
    """

    def __init__(
        self,
        model: open_clip.CLIP,
        empty_string: torch.Tensor | None = None,
        frame_batch: int = 64,
    ) -> None:
        super().__init__()
        self.model = model
        self.frame_batch = frame_batch
        self.tokenizer = open_clip.get_tokenizer(CLIP_MODEL_NAME)
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(3, 1, 1), persistent=False)
        self.register_buffer("empty_string", empty_string, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def compile_for_inference(self, backend: str = "inductor") -> None:
        """Compiles the image tower in place (state-dict keys unchanged): it carries almost all
        of the extraction FLOPs, and fusing its norms, QuickGELU and residual adds saves memory
        traffic (with Synchformer compiled too, the encoders ran 3.6 -> 5.3 videos/s in bf16 on
        an H100; bench/README.md). Frames go through in chunks of ``frame_batch`` (a multiple of
        64, one video at 8 fps), so one static shape serves every batch; the first chunk pays
        the compilation."""
        self.model.visual.compile(dynamic=False, backend=backend)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, H, W) frames in [0, 1] -> (B, N, 1024) unit-norm image embeddings."""
        batch, count = frames.shape[:2]
        flat = frames.flatten(0, 1)
        features = []
        for start in range(0, flat.shape[0], self.frame_batch):
            chunk = flat[start : start + self.frame_batch].to(self.device, torch.float32)
            chunk = (chunk - self.mean) / self.std  # torchvision Normalize: sub, then div
            features.append(self.model.encode_image(chunk, normalize=True))
        return torch.cat(features).view(batch, count, -1)

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, 77) int64 token ids: start 49406, end 49407, zero padding, lower-cased."""
        return self.tokenizer(list(captions))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 77) ids -> (B, 77, 1024) unit-norm last hidden states (MMAudio's text features).

        token + positional embedding, causal transformer, ln_final, L2 norm per token; no
        pooling and no text projection (MMAudio's patched ``encode_text``).
        """
        model = self.model
        tokens = tokens.to(self.device)
        x = model.token_embedding(tokens) + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        return F.normalize(model.ln_final(x), dim=-1)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> (B, 77, 1024) per-token features."""
        return self.encode_tokens(self.tokenize(captions))

    def empty_string_feature(self) -> torch.Tensor:
        """(1, 77, 1024): the released empty_string.pth when loaded, else encode_text([''])."""
        if self.empty_string is not None:
            return self.empty_string
        return self.encode_text([""])


def load_empty_string(path: str | os.PathLike) -> torch.Tensor:
    """empty_string.pth as a (1, 77, 1024) float32 tensor."""
    value = weights.load(path)
    if not isinstance(value, torch.Tensor) or value.dim() not in (2, 3):
        raise ValueError(f"{path}: expected a (1, 77, 1024) tensor (MMAudio's empty_string.pth)")
    value = value.float()
    return value if value.dim() == 3 else value.unsqueeze(0)


def build_clip(
    state: Mapping[str, torch.Tensor] | None,
    size: str = "full",
    empty_string: torch.Tensor | None = None,
    frame_batch: int = 64,
    device: str | torch.device = "cpu",
    source: str = "state dict",
) -> ClipEncoder:
    """A frozen ClipEncoder from open_clip tensors (assigned, not copied); seeded if None. The
    image tower runs its attention and patch embedding in the forms of clip_forms (same
    parameters and keys)."""
    model = _build_open_clip(size)
    if state is not None:
        load_strict(model, state, source, assign=True)
    else:
        model.to_empty(device="cpu")
        seeded_init(model, seed=CLIP_TINY_SEED)
    # attn_mask is a non-persistent buffer, still on the meta device.
    model.attn_mask = torch.full((model.context_length,) * 2, float("-inf"), device="cpu").triu_(1)
    use_gemm_forms(model.visual)
    encoder = ClipEncoder(model.float(), empty_string, frame_batch=frame_batch)
    return freeze(encoder.to(device))


@gin.configurable
def get_clip(
    checkpoint: str | Path | None = None,
    size: str = "full",
    empty_string_path: str | Path | None = None,
    frame_batch: int = 64,
    device: str | torch.device = "cpu",
) -> ClipEncoder:
    """A frozen CLIP encoder in eval mode.

    'full' loads ``checkpoint`` (default: open_clip_pytorch_model.bin in the weights directory,
    else the offline Hugging Face cache of apple/DFN5B-CLIP-ViT-H-14-384) and
    ``empty_string_path`` (default: empty_string.pth in the weights directory when present, else
    computed from the model). Given files are found by ``weights.resolve``. 'tiny' is
    seeded-random unless a checkpoint of its own shapes is given.
    """
    if checkpoint is None and size == "full":
        checkpoint = default_clip_checkpoint()
    elif checkpoint is not None:
        checkpoint = weights.resolve(checkpoint)
    state = load_open_clip_state_dict(checkpoint) if checkpoint is not None else None
    if empty_string_path is None and size == "full":
        empty_string_path = weights.find(EMPTY_STRING_WEIGHTS)
    elif empty_string_path is not None:
        empty_string_path = weights.resolve(empty_string_path)
    empty = load_empty_string(empty_string_path) if empty_string_path is not None else None
    return build_clip(state, size, empty, frame_batch, device, source=str(checkpoint))
