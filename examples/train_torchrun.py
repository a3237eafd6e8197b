"""Train with DDP under torchrun: one process per GPU (NCCL) or per CPU slot (gloo).

    torchrun --nproc-per-node 2 examples/train_torchrun.py --preset demo --out runs/ddp_demo
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        examples/train_torchrun.py --preset imagenet --data /data/imagenet --method directclr

Every process runs the same ``collapse_probe.ssl.train``: it joins the process group from
torchrun's environment, shards each global batch (``--batch-size`` is global and must divide by
the number of processes), gathers embeddings with gradient for the loss, converts BatchNorm to
SyncBatchNorm on CUDA, and writes checkpoints and metrics from rank 0 only. The CLI is the same
thing: ``torchrun ... -m collapse_probe_cli.main train ...``.
"""

from __future__ import annotations

import argparse

from collapse_probe.ssl import preset_config, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--data", default=None)
    parser.add_argument("--method", default=None)
    parser.add_argument("--projector", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--out", default="runs/ddp")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    config = preset_config(args.preset, data=args.data, method=args.method, projector=args.projector,
                           epochs=args.epochs, batch_size=args.batch_size, out=args.out, resume=args.resume or None)
    result = train(config)
    if result.metrics:  # rank 0
        print({k: v for k, v in result.metrics[-1].items() if k != "spectra"})


if __name__ == "__main__":
    main()
