"""How close an intervened generation is to the dense one: PSNR and SSIM of the decoded frames
(torchmetrics), latent MSE, and LPIPS when its weights are available locally."""

from __future__ import annotations

import math

import numpy as np
import torch

# frames of SSIM per convolution: about this many pixels (0.35 GB of buffers per million pixels)
SSIM_PIXELS = 1 << 20
LPIPS_NOTE = "LPIPS skipped: it needs torchvision and its pretrained weights, which are not available offline here"


def _frames_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) floats in [0, 1] -> (T, 3, H, W) float64."""
    tensor = torch.as_tensor(np.asarray(frames), dtype=torch.float64)
    return tensor.clamp(0, 1).permute(0, 3, 1, 2).contiguous()


def psnr(test: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> float:
    """PSNR in dB over all frames (data range 1); inf when identical."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _frames_tensor(test), _frames_tensor(reference)
    if torch.equal(a, b):
        return math.inf
    return float(peak_signal_noise_ratio(a, b, data_range=1.0))


def ssim(test: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> float:
    """Mean SSIM over frames (Gaussian window 11, or the largest odd size the frames allow).

    Computed in float32, a few frames at a time: torch's grouped convolution in float64, or on a
    whole 480 x 832 x 17 video at once, asks for tens of GB."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _frames_tensor(test).float(), _frames_tensor(reference).float()
    side = min(a.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    per_chunk = max(1, SSIM_PIXELS // (a.shape[-1] * a.shape[-2]))
    total = 0.0
    for start in range(0, a.shape[0], per_chunk):
        part = slice(start, start + per_chunk)
        value = structural_similarity_index_measure(a[part], b[part], data_range=1.0, kernel_size=kernel)
        total += float(value) * a[part].shape[0]  # the mean over frames of each frame's mean SSIM
    return total / a.shape[0]


def latent_mse(test: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean squared difference of the final latents."""
    return float(((test.double() - reference.double()) ** 2).mean())


def lpips_available() -> bool:
    """Whether torchmetrics' LPIPS can run offline (torchvision importable and its weights cached)."""
    try:
        import torchvision  # noqa: F401
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # noqa: F401
    except Exception:  # an absent or broken torchvision both mean "not available"
        return False
    from pathlib import Path

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return hub.is_dir() and any(p.name.startswith(("alexnet", "vgg", "squeezenet")) for p in hub.iterdir())


def lpips(test: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> float:
    """LPIPS (AlexNet) averaged over frames; nan when it is not available offline."""
    if not lpips_available():
        return float("nan")
    from torchmetrics.functional.image import learned_perceptual_image_patch_similarity

    a, b = _frames_tensor(test).float(), _frames_tensor(reference).float()
    return float(learned_perceptual_image_patch_similarity(a, b, net_type="alex", normalize=True))
