"""End-to-end images/s of `collapse-probe spectrum` against the hand-written way, in one run.

The hand-written way is the paper's public spectrum script re-typed for a folder: torchvision
ImageFolder + PIL + DataLoader, every embedding collected in memory, then numpy ``np.cov`` and
``np.linalg.svd`` on the CPU. Both sides read the same generated JPEGs (500 x 375, like ImageNet
val), use the same checkpoint, transform (resize 256, centre crop 224), batch size and workers,
and each run is a fresh process timed from outside (imports, checkpoint loading and first-call
costs included, as a user meets them). The two spectra are compared at the end.

    python benchmarks/bench_cli_images.py --n-images 256 --arch resnet18 --workers 2
    python benchmarks/bench_cli_images.py --device cuda --precision bf16 --arch resnet50 --n-images 5000

Writes a JSON line per configuration to stdout (and --json-out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image


def make_folder(root: Path, n: int, width: int = 500, height: int = 375) -> Path:
    """n smooth random JPEGs in 10 class folders (ImageFolder needs class sub-folders)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        noise = rng.integers(0, 24, size=(height, width, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC)) // 2 + noise
        Image.fromarray(image).save(folder / f"{i:06d}.JPEG", quality=90)
    return root


def hand_written(checkpoint: Path, arch: str, folder: Path, batch_size: int, workers: int,
                 device: str, precision: str) -> np.ndarray:
    """The naive baseline: collect all embeddings, numpy cov + SVD. Returns descending eigenvalues."""
    from torchvision import datasets, transforms

    model = getattr(torchvision.models, arch)()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()
    model.eval().to(device)
    transform = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(folder), transform), batch_size=batch_size,
                                         num_workers=workers, pin_memory=device.startswith("cuda"))
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    embeddings = []
    with torch.no_grad():
        for x, _ in loader:
            with torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None):
                embeddings.append(model(x.to(device)).float().cpu().numpy())
    z = np.concatenate(embeddings)
    covariance = np.cov(z.T)
    return np.linalg.svd(covariance, compute_uv=False)


def collapse_probe_cli(checkpoint: Path, arch: str, folder: Path, out: Path, batch_size: int, workers: int,
                       device: str, precision: str) -> np.ndarray:
    """`collapse-probe spectrum CKPT --arch ARCH --data FOLDER ...`, in process."""
    from collapse_probe_cli.errors import run_cli
    from collapse_probe_cli.main import cli

    from collapse_probe.pipeline.outputs import load_spectra

    code = run_cli(cli, ["spectrum", str(checkpoint), "--arch", arch, "--data", str(folder), "--batch-size",
                         str(batch_size), "--workers", str(workers), "--device", device, "--precision", precision,
                         "--quiet", "--out", str(out)])
    if code != 0:
        raise SystemExit(f"collapse-probe spectrum exited {code}")
    return load_spectra(out / "spectrum.json").spectra["fc"].eigenvalues.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--folder", type=Path, help="Reuse (or create) the JPEG folder here.")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--one", choices=["hand-written", "collapse-probe"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a single timed run in this fresh process
        common = (args.batch_size, args.workers, args.device, args.precision)
        if args.one == "hand-written":
            values = hand_written(args.checkpoint, args.arch, args.folder, *common)
        else:
            values = collapse_probe_cli(args.checkpoint, args.arch, args.folder, args.result.with_suffix(""), *common)
        np.save(args.result, values)
        return

    work = Path(tempfile.mkdtemp(prefix="bench_cli_"))
    folder = args.folder or work / "images"
    if not folder.exists() or not any(folder.rglob("*.JPEG")):
        make_folder(folder, args.n_images)
    n = sum(1 for _ in folder.rglob("*.JPEG"))
    torch.manual_seed(0)
    checkpoint = work / f"{args.arch}.pth"
    torch.save(getattr(torchvision.models, args.arch)().state_dict(), checkpoint)

    times: dict[str, list[float]] = {"hand-written": [], "collapse-probe": []}
    spectra: dict[str, np.ndarray] = {}
    for repeat in range(args.repeats):  # alternate, so load changes on a shared machine hit both
        for name in times:
            # each run is a fresh process, as a user runs it: imports and first-call costs included
            result = work / f"{name}{repeat}.npy"
            command = [sys.executable, __file__, "--one", name, "--checkpoint", str(checkpoint), "--folder",
                       str(folder), "--result", str(result), "--arch", args.arch, "--batch-size",
                       str(args.batch_size), "--workers", str(args.workers), "--device", args.device,
                       "--precision", args.precision]
            start = time.perf_counter()
            subprocess.run(command, check=True)
            times[name].append(time.perf_counter() - start)
            spectra[name] = np.load(result)

    top = min(len(spectra["hand-written"]), 50, n - 1)  # beyond N - 1 the eigenvalues are rounding noise
    relative = np.abs(spectra["collapse-probe"][:top] - spectra["hand-written"][:top]) / spectra["hand-written"][:top]
    machine = (torch.cuda.get_device_name() if args.device.startswith("cuda") else
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores")
    rows = []
    for name, values in times.items():
        best = min(values)
        rows.append({"method": name, "images": n, "arch": args.arch, "device": args.device, "machine": machine,
                     "precision": args.precision, "batch_size": args.batch_size, "workers": args.workers,
                     "seconds_best": best, "seconds_median": statistics.median(values), "images_per_s": n / best,
                     "seconds_all": [round(v, 2) for v in values],
                     "load_average_1min": os.getloadavg()[0],
                     "max_rel_diff_top50_eigenvalues": float(relative.max())})
    for row in rows:
        print(json.dumps(row))
    if args.json_out:
        args.json_out.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    speedup = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    print(f"\n| method | images/s (best of {args.repeats}) | seconds |\n|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['images_per_s']:.1f} | {row['seconds_best']:.1f} |")
    print(f"\nspeed-up {speedup:.2f}x; top-50 eigenvalues agree to {relative.max():.1e} relative; {machine}")


if __name__ == "__main__":
    main()
