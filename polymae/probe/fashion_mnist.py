"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; MIT licence) idx files → PNG folders per class and a
labels table, a seeded subset of each official split. The idx files come with the Debian package
``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist/), which scripts/setup.sh installs;
nothing is downloaded.

    python -m polymae.probe.fashion_mnist OUT [--train 2000] [--test 500] [--seed 0]

    OUT/train/<class>/<index>.png   the training images (pre-training reads these without labels)
    OUT/test/<class>/<index>.png    the test images
    OUT/labels.csv                  path, label, split (the official train/test split)
    OUT/PROVENANCE.txt              where the images came from and which indices were taken
"""

from __future__ import annotations

import argparse
import csv
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip) → its array: (N, 28, 28) uint8 images or (N,) uint8 labels."""
    data = gzip.decompress(path.read_bytes())
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes), the body has {body.size}")
    return body.reshape(shape)


def convert(out: str | Path, train: int = 2000, test: int = 500, seed: int = 0, source: Path = SOURCE) -> Path:
    """Write a seeded subset (``train`` / ``test`` images, drawn without replacement per split)
    as PNGs; idempotent: an existing OUT with the same PROVENANCE is left as it is."""
    out = Path(out)
    provenance = (f"Fashion-MNIST (Zalando Research, MIT licence) from the Debian package dataset-fashion-mnist, "
                  f"{source}; seeded subset: numpy default_rng({seed}).permutation per split, first "
                  f"{train} train / {test} test (t10k) images; file name = index in the idx file.\n")
    if (out / "PROVENANCE.txt").is_file() and (out / "PROVENANCE.txt").read_text() == provenance:
        return out
    rows = []
    for split, count in (("train", train), ("test", test)):
        images, labels = (read_idx(source / name) for name in FILES[split])
        chosen = np.sort(np.random.default_rng(seed).permutation(len(images))[:count])
        for i in chosen:
            rel = f"{split}/{CLASSES[labels[i]]}/{i:05d}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(out / rel)
            rows.append((rel, CLASSES[labels[i]], split))
    with (out / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "split"), *rows])
    (out / "PROVENANCE.txt").write_text(provenance)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(convert(args.out, args.train, args.test, args.seed))


if __name__ == "__main__":
    main()
