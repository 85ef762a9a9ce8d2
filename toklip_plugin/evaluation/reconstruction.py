"""Reconstruction check: TokLIP leaves the VQ tokenizer untouched.

Each image is reconstructed twice: through ``TokLIP.decode_codes(TokLIP.tokenize(x))`` and
through a plain LlamaGen-compatible VQ model the way LlamaGen's own reconstruction script does
(``encode`` -> indices -> ``decode_code``). With the same VQ weights the two must be
bit-identical; the report counts the images where they are, and gives PSNR / SSIM against the
input (and rFID when ``torch-fidelity`` or ``clean-fid`` is installed and ``fid_dir`` is given).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

import torch
from torchvision.utils import save_image

from .metrics import psnr, ssim
from .runtime import run_batches

__all__ = ["plain_vq_reconstruct", "evaluate_reconstruction", "rfid"]


def plain_vq_reconstruct(vq, images: torch.Tensor) -> torch.Tensor:
    """LlamaGen's reconstruction: ``latent, _, (_, _, indices) = vq.encode(x); vq.decode_code(indices, latent.shape)``."""
    latent, _, (_, _, indices) = vq.encode(images)
    return vq.decode_code(indices, latent.shape)


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1) / 2).clamp(0, 1)


class _PngPairs:
    """Writes reference / reconstruction pairs as numbered PNGs for rFID."""

    def __init__(self, root: Path):
        self.root = root
        self.count = 0
        for sub in ("reference", "reconstruction"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def write(self, reference: torch.Tensor, reconstruction: torch.Tensor) -> None:
        for ref, rec in zip(reference, reconstruction):
            save_image(ref, self.root / "reference" / f"{self.count:06d}.png")
            save_image(rec, self.root / "reconstruction" / f"{self.count:06d}.png")
            self.count += 1


def _compare(model, vq, images: torch.Tensor, pngs: Optional[_PngPairs]) -> dict[str, torch.Tensor]:
    ours = model.decode_codes(model.tokenize(images))
    plain = plain_vq_reconstruct(vq, images)
    reference, recon = _to_unit(images), _to_unit(ours)
    if pngs is not None:
        pngs.write(reference, recon)
    return {
        "identical": torch.tensor([torch.equal(a, b) for a, b in zip(ours, plain)], dtype=torch.float32),
        "max_abs_diff": (ours.float() - plain.float()).abs().flatten(1).amax(dim=1),
        "psnr": psnr(recon, reference),
        "ssim": ssim(recon, reference),
    }


def evaluate_reconstruction(model, vq, loader, device: torch.device, amp: str = "none",
                            fid_dir: Optional[str | Path] = None, total: Optional[int] = None) -> dict[str, Any]:
    """Compare TokLIP's and the plain VQ model's reconstructions over a loader of images in [-1, 1]."""
    pngs = _PngPairs(Path(fid_dir)) if fid_dir is not None else None
    encoded = run_batches(lambda x: _compare(model, vq, x, pngs), loader, device, amp,
                          desc="reconstruction", total=total)
    f = encoded.features
    results = {
        "images": len(encoded),
        "identical_images": int(f["identical"].sum()),
        "all_identical": bool(f["identical"].all()),
        "max_abs_diff": f["max_abs_diff"].max().item(),
        "psnr": f["psnr"].mean().item(),
        "ssim": f["ssim"].mean().item(),
        **encoded.skip_report(),
    }
    if fid_dir is not None:
        results["rfid"] = rfid(pngs.root / "reference", pngs.root / "reconstruction")
    return results


def rfid(reference_dir: Path, reconstruction_dir: Path) -> float | str:
    """FID between two image folders with torch-fidelity or clean-fid; a note when neither is installed."""
    if importlib.util.find_spec("torch_fidelity"):
        import torch_fidelity

        metrics = torch_fidelity.calculate_metrics(input1=str(reconstruction_dir), input2=str(reference_dir),
                                                   fid=True, cuda=torch.cuda.is_available(), verbose=False)
        return float(metrics["frechet_inception_distance"])
    if importlib.util.find_spec("cleanfid"):
        from cleanfid import fid

        return float(fid.compute_fid(str(reconstruction_dir), str(reference_dir)))
    return "not computed: pip install torch-fidelity (or clean-fid) for rFID"
