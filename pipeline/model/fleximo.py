"""FlexiMo: DOFA's wavelength-conditioned ViT at any patch size and band set."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.blocks import Block
from pipeline.model.cache import TensorCache, weights_version
from pipeline.model.config import ModelConfig
from pipeline.model.linear import PreparedLinear, onednn_linear_available
from pipeline.model.patch_embed import DynamicPatchEmbed
from pipeline.model.precision import Precision, autocast, resolve_precision
from pipeline.model.upernet import UPerNetHead
from pipeline.model.validation import token_grid, validate_inputs

POS_EMBED_CACHE_SIZE = 32


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a ``(1, 1 + n * n, D)`` position embedding to a ``(h, w)`` token grid.

    The cls entry is kept and the square grid part is resized bilinearly
    (``align_corners=False``, no antialiasing). Returns ``(1, 1 + h * w, D)``.
    """
    num_grid = pos_embed.shape[1] - 1
    side = int(round(num_grid**0.5))
    if side * side != num_grid:
        raise ValueError(
            f"pos_embed has {num_grid} grid entries, which is not a square grid; expected (1, 1 + n*n, D)."
        )
    if (side, side) == tuple(grid):
        return pos_embed
    cls_entry, grid_part = pos_embed[:, :1], pos_embed[:, 1:]
    grid_part = grid_part.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid_part = F.interpolate(grid_part, size=grid, mode="bilinear", align_corners=False)
    grid_part = grid_part.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([cls_entry, grid_part], dim=1)


_DENSE_HEAD_CHILDREN = ("conv0.", "conv1.", "conv2.", "conv3.", "decoder.", "cls_seg.", "pixel_skip.")


def _strip_dense_head_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(f"{prefix}dense_head.")]:
        state_dict[prefix + key[len(f"{prefix}dense_head.") :]] = state_dict.pop(key)


def _add_dense_head_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    if getattr(module, "dense_head", None) is None:
        return
    for key in [k for k in state_dict if k.startswith(tuple(prefix + c for c in _DENSE_HEAD_CHILDREN))]:
        state_dict[f"{prefix}dense_head.{key[len(prefix):]}"] = state_dict.pop(key)


class FlexiMo(nn.Module):
    """DOFA ViT encoder with a classifier or a dense upernet head.

    Call it as ``model(x, wavelengths_um=[...], patch_size=p)`` with ``x`` of
    shape ``(B, C, H, W)`` and one wavelength (µm) per channel. Returns logits
    ``(B, num_classes)`` for a classifier and ``(B, num_classes, H, W)`` for
    the upernet head.

    ``forward`` changes no module state. It only fills thread-safe caches: the
    generated kernel, the PI-resize matrix, the resized position embedding,
    the prepared (prepacked or bfloat16) linear layers and the folded dense
    head. Several threads may call one model at once with different patch
    sizes and band sets.

    Parameters
    ----------
    config
        Architecture; see :class:`~pipeline.model.config.ModelConfig`.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = DynamicPatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_embed_grid**2, dim))
        self.blocks = nn.ModuleList(
            [Block(dim, config.num_heads, config.mlp_hidden_dim, config.layernorm_eps) for _ in range(config.depth)]
        )
        self.fc_norm: nn.LayerNorm | None = None
        self.head: nn.Linear | None = None
        self.dense_head: UPerNetHead | None = None
        if config.head == "classifier":
            self.fc_norm = nn.LayerNorm(dim, eps=config.layernorm_eps)
            self.head = nn.Linear(dim, config.num_classes)
        else:
            self.dense_head = UPerNetHead(config)
        self._pos_cache: TensorCache[torch.Tensor] = TensorCache(POS_EMBED_CACHE_SIZE)
        self._prepared_cache: TensorCache[list[dict[str, PreparedLinear]]] = TensorCache(2)
        self._head_cache: TensorCache[UPerNetHead] = TensorCache(2)
        # Inference on the CPU runs the blocks' linear layers through prepacked
        # oneDNN weights, which doubles their memory; set False to save it.
        self.prepare_linears = True
        # A FlexiMo pixel-task checkpoint stores the head's keys at the top
        # level (conv0.*, decoder.*, cls_seg.*), not under "dense_head.".
        self.register_state_dict_post_hook(_strip_dense_head_prefix)
        self.register_load_state_dict_pre_hook(_add_dense_head_prefix)

    def position_embedding(self, grid: tuple[int, int], *, device: torch.device) -> torch.Tensor:
        """Return the float32 position embedding ``(1, 1 + h * w, D)`` for a token grid, cached."""
        if torch.is_grad_enabled() and self.pos_embed.requires_grad:
            return resize_pos_embed(self.pos_embed, grid).to(device)
        key = (grid, device, weights_version([self.pos_embed]))
        return self._pos_cache.get_or_compute(key, lambda: resize_pos_embed(self.pos_embed, grid).to(device))

    def prepared_linears(self, dtype: torch.dtype, device: torch.device) -> list[dict[str, PreparedLinear]]:
        """Return per-block inference copies of the linear layers, cached until the weights change."""
        key = (dtype, device, weights_version(self.blocks.parameters()))
        return self._prepared_cache.get_or_compute(
            key, lambda: [block.prepare_linears(dtype, device) for block in self.blocks]
        )

    def inference_head(self, dtype: torch.dtype, device: torch.device) -> UPerNetHead:
        """Return the dense head folded for inference (see ``UPerNetHead.inference_copy``), cached."""
        assert self.dense_head is not None
        head = self.dense_head
        key = (dtype, device, weights_version([*head.parameters(), *head.buffers()]))
        return self._head_cache.get_or_compute(key, lambda: head.inference_copy(dtype, device))

    def _run_dense_head(
        self,
        features: torch.Tensor,
        pixels: torch.Tensor,
        wavelengths_um: Sequence[float],
        precision: Precision,
    ) -> torch.Tensor:
        assert self.dense_head is not None
        head = self.dense_head
        size = (pixels.shape[-2], pixels.shape[-1])
        if head.pixel_skip is None:
            pixels = None
        if self.training or (torch.is_grad_enabled() and any(p.requires_grad for p in head.parameters())):
            with autocast(features.device, precision, check=False):
                return head(features, size, pixels=pixels, wavelengths_um=wavelengths_um)
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        features = features.to(dtype=dtype, memory_format=torch.channels_last)
        if pixels is not None:
            pixels = pixels.to(dtype=dtype, memory_format=torch.channels_last)
        with autocast(features.device, "float32", check=False):
            head = self.inference_head(dtype, features.device)
            return head(features, size, pixels=pixels, wavelengths_um=wavelengths_um).contiguous()

    def _use_prepared_linears(self, dtype: torch.dtype, device: torch.device) -> bool:
        # oneDNN's prepacked linear has no backward, and the input may need a gradient.
        if torch.is_grad_enabled():
            return False
        if dtype != torch.float32:
            return True
        return self.prepare_linears and device.type == "cpu" and onednn_linear_available()

    def clear_caches(self) -> None:
        """Drop cached kernels, position embeddings and prepared linear layers to free memory.

        Stale entries are never used, so calling this is never needed for correctness.
        """
        self.patch_embed.clear_cache()
        self._pos_cache.clear()
        self._prepared_cache.clear()
        self._head_cache.clear()

    def forward_tokens(
        self,
        x: torch.Tensor,
        *,
        wavelengths_um: Sequence[float],
        patch_size: int,
        precision: Precision | None = None,
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """Run the encoder; return float32 tokens ``(B, 1 + h * w, D)`` (cls first) and the grid ``(h, w)``."""
        validate_inputs(x, wavelengths_um, patch_size)
        precision = resolve_precision(precision, x.device)
        grid = token_grid((x.shape[-2], x.shape[-1]), patch_size)
        compute_dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        block_linears: list[dict[str, PreparedLinear]] | list[None] = [None] * len(self.blocks)
        if self._use_prepared_linears(compute_dtype, x.device):
            block_linears = self.prepared_linears(compute_dtype, x.device)

        with autocast(x.device, "float32", check=False):
            tokens = self.patch_embed(x.to(compute_dtype), wavelengths_um, patch_size)
            tokens = tokens.flatten(2).transpose(1, 2).float()

            pos_embed = self.position_embedding(grid, device=tokens.device)
            cls_token = (self.cls_token + pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([cls_token, tokens + pos_embed[:, 1:]], dim=1)

            for block, linears in zip(self.blocks, block_linears, strict=True):
                tokens = block(tokens, linears)
        return tokens, grid

    def forward_features(
        self,
        x: torch.Tensor,
        *,
        wavelengths_um: Sequence[float],
        patch_size: int,
        precision: Precision | None = None,
    ) -> torch.Tensor:
        """Return float32 encoder features (``precision`` as in :meth:`forward`).

        Returns
        -------
        torch.Tensor
            Classifier: mean of the patch tokens after ``fc_norm``, ``(B, D)``.
            Upernet: the patch tokens as a map ``(B, D, h, w)``.
        """
        tokens, grid = self.forward_tokens(x, wavelengths_um=wavelengths_um, patch_size=patch_size, precision=precision)
        patches = tokens[:, 1:]
        if self.fc_norm is not None:
            return self.fc_norm(patches.mean(dim=1))
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, grid[0], grid[1])

    def forward(
        self,
        x: torch.Tensor,
        *,
        wavelengths_um: Sequence[float],
        patch_size: int,
        precision: Precision | None = None,
    ) -> torch.Tensor:
        """Return float32 logits: ``(B, K)`` for a classifier, ``(B, K, H, W)`` for the upernet head.

        Parameters
        ----------
        x
            ``(B, C, H, W)`` input, already scaled the way the weights expect
            (see :meth:`pipeline.model.cards.ModelCard.prepare_input`).
        wavelengths_um
            Centre wavelength of each of the ``C`` channels, in micrometres.
        patch_size
            Patch side in pixels, ``1 <= patch_size <= min(H, W)``.
        precision
            ``"float32"``: exact, also inside an enclosing autocast region.
            ``"bfloat16"``: matrix products and the dense head in bfloat16
            (LayerNorms and the residual stream stay float32), on CUDA and on
            CPUs with native bfloat16 support. ``None`` (default): bfloat16
            inside an enabled ``torch.autocast(dtype=torch.bfloat16)`` region
            for ``x``'s device, else float32.

        Raises
        ------
        ValueError
            For an input that is not ``(B, C, H, W)``, wavelengths that are not
            one positive micrometre value per channel, an invalid patch size,
            or bfloat16 on a device without support.

        Notes
        -----
        Under ``torch.inference_mode()`` or ``torch.no_grad()`` the blocks run
        on cached prepacked weights and the dense head on its folded copy.
        With gradients enabled every step runs on the modules themselves,
        which is slower but differentiable.
        """
        validate_inputs(x, wavelengths_um, patch_size)
        precision = resolve_precision(precision, x.device)
        features = self.forward_features(x, wavelengths_um=wavelengths_um, patch_size=patch_size, precision=precision)
        if self.head is None:
            return self._run_dense_head(features, x, wavelengths_um, precision).float()
        with autocast(x.device, precision, check=False):
            return self.head(features).float()
