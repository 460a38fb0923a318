"""The torch towers of a transformers ``CLIPModel``, per the bundle contract: one implementation
for the ONNX exporter, the torch.export variant and the gate's fp32 reference.

Image: pixel_values → projected embedding. Text: int64 ids → projected embedding pooled at
``argmax(ids)`` (CLIP's end-of-text token has the largest id), whatever ``eos_token_id`` the HF
config holds; argmax runs on int32 because older ONNX Runtime builds have no int64 ArgMax.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def torch_towers(model: Any):
    """(image, text) ``torch.nn.Module`` towers of ``model``, in eval mode."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_model, self.projection = model.vision_model, model.visual_projection

        def forward(self, pixel_values):
            return self.projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    class TextTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_model, self.projection = model.text_model, model.text_projection

        def forward(self, input_ids):
            hidden = self.text_model(input_ids=input_ids).last_hidden_state
            eot = input_ids.to(torch.int32).argmax(dim=-1)
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            return self.projection(hidden[rows, eot])

    return ImageTower().eval(), TextTower().eval()


def torch_embed(
    model: Any, pixels: np.ndarray, ids: np.ndarray, batch: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised float32 (image, text) embeddings through the towers, on the model's device."""
    import torch

    image_tower, text_tower = torch_towers(model)
    device = next(model.parameters()).device
    img, txt = [], []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            x = torch.from_numpy(np.ascontiguousarray(pixels[i : i + batch])).to(device)
            img.append(image_tower(x).float().cpu().numpy())
        for i in range(0, len(ids), batch):
            x = torch.from_numpy(np.asarray(ids[i : i + batch], np.int64)).to(device)
            txt.append(text_tower(x).float().cpu().numpy())
    return np.concatenate(img).astype(np.float32), np.concatenate(txt).astype(np.float32)
