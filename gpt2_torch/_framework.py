"""PyTorch plumbing of the GPT-2 models that is not the model itself (issue #14).

:class:`FrameworkMixin` is a base of ``gpt2_torch.modeling.GPT2PreTrainedModel``: transformers'
init-after-construction (``_init_weights`` / ``post_init``), the tied LM head, the ``device`` /
``dtype`` conveniences ``nn.Module`` lacks and activation checkpointing (``state_dict`` /
``load_state_dict`` are ``nn.Module``'s own). ``gpt2_tf`` and ``gpt2_flax`` have a
``_framework.py`` with a ``FrameworkMixin`` of the same name holding their own framework's
plumbing, so the three ``modeling.py`` files keep only what translates.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FrameworkMixin:
    """torch-only methods of ``GPT2PreTrainedModel`` (which is also an ``nn.Module``)."""

    # -- init and tying
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' init: N(0, initializer_range) for matrices, zeros for biases, LN = 1/0."""
        from gpt2_torch.modeling import GPT2MLP, Conv1D, GPT2Attention  # modeling imports us

        std = self.config.initializer_range
        if isinstance(module, nn.Linear | Conv1D):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        # GPT-2 paper: residual projections scaled by 1/sqrt(N), N = 2 residual layers per block
        if isinstance(module, GPT2Attention | GPT2MLP):
            module.c_proj.weight.data.normal_(
                mean=0.0, std=std / math.sqrt(2 * self.config.n_layer)
            )

    def post_init(self) -> None:
        """Initialise every weight (HF's scheme) and tie the LM head (no init for a model
        built on the meta device: ``from_pretrained`` assigns the checkpoint instead)."""
        if not any(p.is_meta for p in self.parameters()):
            self.apply(self._init_weights)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make ``lm_head.weight`` the very same Parameter as ``wte.weight`` (when tied)."""
        head = getattr(self, "lm_head", None)
        if head is not None and self.config.tie_word_embeddings:
            head.weight = self.transformer.wte.weight

    # -- conveniences
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # -- activation checkpointing
    def gradient_checkpointing_enable(self) -> None:
        """Recompute each block in the backward pass (saves activation memory; forces use_cache off)."""
        from gpt2_torch.modeling import GPT2Model

        for m in self.modules():
            if isinstance(m, GPT2Model):
                m.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        from gpt2_torch.modeling import GPT2Model

        for m in self.modules():
            if isinstance(m, GPT2Model):
                m.gradient_checkpointing = False
