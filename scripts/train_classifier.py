"""Train the evaluation classifier on the Fashion-MNIST training split and report test accuracy.

    OMP_NUM_THREADS=1 python scripts/train_classifier.py --out energycrf/pretrained/ldm-fashion/classifier
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from energycrf.apps.ldm import classifier as C

    x, y = C.real_images("train")
    xt, yt = C.real_images("test")
    t0 = time.perf_counter()
    model = C.train_classifier(x, y, epochs=args.epochs, seed=args.seed)
    secs = time.perf_counter() - t0
    acc = C.accuracy(model, xt, yt)
    C.save_classifier(model, args.out, {"test_accuracy": round(acc, 4), "epochs": args.epochs,
                                         "train_seconds": round(secs, 1), "seed": args.seed})
    print(f"classifier: test accuracy {acc:.4f} after {args.epochs} epochs in {secs:.0f} s; saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
