"""Training throughput of the reference trainer's demo preset on this machine.

    python benchmarks/bench_train.py                 # demo preset, 1 and 2 torch threads
    python benchmarks/bench_train.py --threads 2 --epochs 3

Reports steady-state training images/s (the last epoch; each image = two augmented views,
forward + backward + LARS step, batched tensor augmentation included, spectrum monitor off) and
the 1-minute load average, because a shared machine's other jobs change the number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile

import torch

from collapse_probe.ssl import preset_config, train


def bench(threads: int, epochs: int, **overrides) -> dict:
    with tempfile.TemporaryDirectory() as out:
        config = preset_config("demo", epochs=epochs, monitor_every=0, log_every=0, threads=threads, out=out, **overrides)
        load_before = os.getloadavg()[0]
        result = train(config)
        rows = result.metrics
    return {
        "preset": "demo", "threads": threads, "batch_size": config.batch_size, "image_size": config.image_size,
        "arch": config.arch, "width": config.width, "epochs": epochs,
        "imgs_per_s_last_epoch": rows[-1]["imgs_per_s"], "imgs_per_s_first_epoch": rows[0]["imgs_per_s"],
        "epoch_time_s": rows[-1]["epoch_time_s"], "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    machine = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "torch": torch.__version__, "cuda": torch.cuda.is_available()}
    for threads in args.threads:
        print(json.dumps({**machine, **bench(threads, args.epochs)}), flush=True)


if __name__ == "__main__":
    main()
