"""How long the synthetic generator and the loader take (a measurement, not a test).

Usage, from the repository root::

    python benchmarks/synthetic_speed.py [N_TRAIN N_TEST SIZE]

Generates N_TRAIN + N_TEST images (default 4000 + 400 at 32x32) into a temporary folder,
then loads the train split twice (decoding, then from the cache), and prints the seconds.
"""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from usnprune.pruner.data.coco import load_split  # noqa: E402
from usnprune.pruner.data.synthetic import generate  # noqa: E402


def main(n_train=4000, n_test=400, size=32):
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        root = generate(Path(tmp) / "ds", n_train, n_test, seed=0, size=size, progress=False)
        gen = time.perf_counter() - t
        t = time.perf_counter()
        load_split(root, "train", size)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        load_split(root, "train", size)
        warm = time.perf_counter() - t
    print(f"generate {n_train}+{n_test} images at {size}x{size}: {gen:.1f} s ({1e3 * gen / (n_train + n_test):.2f} ms/image)")
    print(f"load train split: {cold:.2f} s decoding, {warm:.2f} s from the cache")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:4]))
