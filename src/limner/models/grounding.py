"""What a grounded denoiser reads besides the text: a layout (a phrase and a box per object, GLIGEN-style) as
tensors. Layouts come from a scene's true boxes in training and from a planner at inference."""
from __future__ import annotations

import torch

Layout = list[tuple[str, tuple[float, float, float, float]]]  # (phrase, (x0, y0, x1, y1)) per object, canvas fractions


def tensors(layouts: list[Layout | None], embed: "PhraseEmbedder"):
    """(phrases (B, K, dim), boxes (B, K, 4), mask (B, K)) for a batch. An image without a layout gets no
    tokens (the denoiser then acts as its base model)."""
    k = max([len(lay) for lay in layouts if lay] + [1])
    phrases, boxes = torch.zeros(len(layouts), k, embed.dim), torch.zeros(len(layouts), k, 4)
    mask = torch.zeros(len(layouts), k, dtype=torch.bool)
    for i, lay in enumerate(layouts):
        for j, (p, b) in enumerate(lay or []):
            phrases[i, j], boxes[i, j], mask[i, j] = embed(p), torch.tensor(b), True
    return phrases, boxes, mask


class PhraseEmbedder:
    """The frozen text encoder's mean token state of a phrase, remembered (a world has few phrases)."""

    def __init__(self, encoder):
        self.encoder, self.dim, self.memo = encoder, encoder.dim, {}

    def __call__(self, text: str) -> torch.Tensor:
        if text not in self.memo:
            self.memo[text] = self.encoder.encode([text])[0].mean(0)
        return self.memo[text]
