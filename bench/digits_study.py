"""Study: how an autoencoder's depth and code size change what it learns, on scikit-learn's handwritten digits.

Run from the repository root (needs the `bench` extra: `.venv/bin/pip install -e '.[bench]'`):

    .venv/bin/python bench/digits_study.py

For every number of hidden layers (1-4) and latent size (2-32), and three seeds, it trains the library's
dense autoencoder (`training.loop.train_autoencoder`) on 80 % of the 1,797 8x8 digits and measures, on the
other 20 %: the reconstruction error, and how well the code separates the ten digits (accuracy of a 5-nearest-
neighbour classifier fitted on the training digits' codes). PCA with as many components is the linear
reference. Writes bench/results/digits_study.md and SVG plots under bench/results/digits/. Seeds are fixed and
torch runs on one CPU thread, so a rerun on the same machine gives the same numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from detector.offline import svgplot
from training.loop import TrainSettings, row_errors, train_autoencoder
from training.model import AutoencoderSpec, count_parameters

try:
    import sklearn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier
except ImportError:  # pragma: no cover - a message instead of a traceback
    sys.exit("bench/digits_study.py needs scikit-learn: .venv/bin/pip install -e '.[bench]'")

Array = npt.NDArray[Any]

DEPTHS = (1, 2, 3, 4)
LATENTS = (2, 4, 8, 16, 32)
WIDTHS = (256, 128, 64, 32)          # depth d uses the first d widths (the decoder mirrors them)
SEEDS = (0, 1, 2)
K_NEIGHBOURS = 5
SPLIT_SEED = 0
COMMAND = ".venv/bin/python bench/digits_study.py"
RESULTS = Path(__file__).parent / "results"


def settings(seed: int) -> TrainSettings:
    return TrainSettings(epochs=300, batch_size=64, learning_rate=1e-3, patience=25, validation_fraction=0.15,
                         seed=seed, loss="mse", device="cpu")


@dataclass(frozen=True)
class Run:
    depth: int
    latent: int
    seed: int
    test_mse: float
    knn_accuracy: float
    epochs: int
    best_epoch: int
    parameters: int
    seconds: float
    test_codes: Array


def load() -> tuple[Array, Array, Array, Array]:
    """Pixels scaled to [0, 1]; a stratified 80/20 split (the 20 % is never trained on)."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.2, random_state=SPLIT_SEED,
                                                        stratify=digits.target)
    return x_train, y_train, x_test, y_test


def knn_accuracy(train_codes: Array, y_train: Array, test_codes: Array, y_test: Array) -> float:
    knn = KNeighborsClassifier(n_neighbors=K_NEIGHBOURS).fit(train_codes, y_train)
    return float(knn.score(test_codes, y_test))


def encode(model: Any, x: Array) -> Array:
    with torch.inference_mode():
        codes: Array = model.encode(torch.from_numpy(x)).numpy().astype(np.float64)
    return codes


def run(depth: int, latent: int, seed: int, data: tuple[Array, Array, Array, Array]) -> Run:
    x_train, y_train, x_test, y_test = data
    spec = AutoencoderSpec(n_inputs=x_train.shape[1], hidden=WIDTHS[:depth], latent=latent)
    started = time.perf_counter()
    outcome = train_autoencoder(x_train, spec, settings(seed))
    seconds = time.perf_counter() - started
    errors, _, _ = row_errors(outcome.model, x_test, "mse")
    test_codes = encode(outcome.model, x_test)
    accuracy = knn_accuracy(encode(outcome.model, x_train), y_train, test_codes, y_test)
    return Run(depth, latent, seed, float(errors.mean()), accuracy, len(outcome.history), outcome.best_epoch,
               count_parameters(spec), seconds, test_codes)


def pca_reference(latent: int, data: tuple[Array, Array, Array, Array]) -> tuple[float, float]:
    """Held-out reconstruction error and kNN accuracy of PCA with `latent` components (numpy SVD)."""
    x_train, y_train, x_test, y_test = (np.asarray(a, dtype=np.float64) for a in data)
    mean = x_train.mean(axis=0)
    _, _, vt = np.linalg.svd(x_train - mean, full_matrices=False)
    basis = vt[:latent]
    test_codes = (x_test - mean) @ basis.T
    recon = test_codes @ basis + mean
    accuracy = knn_accuracy((x_train - mean) @ basis.T, y_train.astype(int), test_codes, y_test.astype(int))
    return float(((recon - x_test) ** 2).mean()), accuracy


def mean_std(values: list[float], digits: int) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def aggregate(runs: list[Run]) -> dict[tuple[int, int], list[Run]]:
    cells: dict[tuple[int, int], list[Run]] = {}
    for r in runs:
        cells.setdefault((r.depth, r.latent), []).append(r)
    return cells


def markdown(runs: list[Run], pca: dict[int, tuple[float, float]], pixel_accuracy: float,
             data: tuple[Array, Array, Array, Array]) -> str:
    cells = aggregate(runs)
    header = "| hidden layers (widths) | " + " | ".join(f"latent {latent}" for latent in LATENTS) + " |"
    rule = "|---|" + "---:|" * len(LATENTS)

    def grid(metric: str, digits: int, reference: int) -> list[str]:
        lines = [header, rule]
        for depth in DEPTHS:
            values = [mean_std([getattr(r, metric) for r in cells[(depth, latent)]], digits) for latent in LATENTS]
            lines.append(f"| {depth} ({'-'.join(map(str, WIDTHS[:depth]))}) | " + " | ".join(values) + " |")
        lines.append("| PCA (linear reference) | " + " | ".join(f"{pca[latent][reference]:.{digits}f}"
                                                              for latent in LATENTS) + " |")
        return lines

    epochs = [r.epochs for r in runs]
    best_2d = max(DEPTHS, key=lambda d: np.mean([r.knn_accuracy for r in cells[(d, 2)]]))
    text = [
        "# Autoencoder depth and code size on handwritten digits",
        "",
        f"Data: scikit-learn's `load_digits` ({len(data[0]) + len(data[2])} images of 8x8 pixels, 64 inputs scaled "
        f"to [0, 1], digits 0-9); a stratified split (random_state={SPLIT_SEED}): {len(data[0])} to train on "
        f"(15 % of them held out for early stopping), {len(data[2])} held out for every number below.",
        "",
        "Model: the library's dense autoencoder (`training.model.AutoencoderSpec`, ReLU, linear output) trained "
        "by `training.loop.train_autoencoder` with `TrainSettings(epochs=300, batch_size=64, learning_rate=1e-3, "
        "patience=25, validation_fraction=0.15, loss=\"mse\", device=\"cpu\")`; depth d uses the first d of the "
        f"widths {WIDTHS} and the decoder mirrors the encoder. Seeds {SEEDS}: each cell is the mean ± standard "
        f"deviation over them. Epochs run: {min(epochs)}-{max(epochs)} (early stopping).",
        "",
        "## Held-out reconstruction error (mean squared error per pixel, lower is better)",
        "",
        *grid("test_mse", 4, 0),
        "",
        f"## How well the code separates the digits ({K_NEIGHBOURS}-NN accuracy on the held-out codes, higher is "
        "better)",
        "",
        f"A {K_NEIGHBOURS}-nearest-neighbour classifier is fitted on the training digits' codes and scored on the "
        f"held-out digits' codes. On the raw 64 pixels it scores {pixel_accuracy:.3f}.",
        "",
        *grid("knn_accuracy", 3, 1),
        "",
        "## Plots",
        "",
        "- [reconstruction error vs latent size](digits/reconstruction.svg)",
        "- [kNN accuracy vs latent size](digits/knn_accuracy.svg)",
        *[f"- [2-D code of the held-out digits, {d} hidden layer{'s' if d > 1 else ''}](digits/latent2d_depth{d}.svg)"
          for d in DEPTHS],
        "",
        f"The 2-D code that separates the digits best, by mean kNN accuracy over the seeds: {best_2d} hidden "
        f"layers (the 2-D plots show seed {SEEDS[0]}).",
        "",
        f"Machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, scikit-learn "
        f"{sklearn.__version__}; torch.set_num_threads(1), torch.use_deterministic_algorithms(True).",
        "",
        f"Command: `{COMMAND}`",
        "",
    ]
    return "\n".join(text)


def plots(runs: list[Run], pca: dict[int, tuple[float, float]], y_test: Array, out: Path) -> None:
    cells = aggregate(runs)
    xs = [float(latent) for latent in LATENTS]

    def series(metric: str, reference: int) -> dict[str, tuple[list[float], list[float]]]:
        lines = {f"{d} hidden": (xs, [float(np.mean([getattr(r, metric) for r in cells[(d, latent)]]))
                                      for latent in LATENTS]) for d in DEPTHS}
        lines["PCA"] = (xs, [pca[latent][reference] for latent in LATENTS])
        return lines

    out.mkdir(parents=True, exist_ok=True)
    (out / "reconstruction.svg").write_text(svgplot.line_chart(
        series("test_mse", 0), title="Held-out reconstruction error", x_label="latent size (log scale)",
        y_label="MSE per pixel (log scale)", log_y=True, log_x=True, x_ticks=xs) + "\n", encoding="utf-8")
    (out / "knn_accuracy.svg").write_text(svgplot.line_chart(
        series("knn_accuracy", 1), title=f"{K_NEIGHBOURS}-NN accuracy of the held-out codes",
        x_label="latent size (log scale)", y_label="accuracy", log_x=True, x_ticks=xs) + "\n", encoding="utf-8")
    for depth in DEPTHS:
        [first] = [r for r in cells[(depth, 2)] if r.seed == SEEDS[0]]
        groups = {str(digit): ([round(float(v), 3) for v in first.test_codes[y_test == digit, 0]],
                               [round(float(v), 3) for v in first.test_codes[y_test == digit, 1]])
                  for digit in range(10)}
        (out / f"latent2d_depth{depth}.svg").write_text(svgplot.scatter(
            groups, title=f"2-D code of {len(y_test)} held-out digits, {depth} hidden layer(s), kNN accuracy "
            f"{first.knn_accuracy:.3f}", x_label="code 1", y_label="code 2") + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: bench/results)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    data = load()
    started = time.perf_counter()
    runs = []
    for depth in DEPTHS:
        for latent in LATENTS:
            for seed in SEEDS:
                r = run(depth, latent, seed, data)
                runs.append(r)
                print(f"depth {depth} latent {latent:2d} seed {seed}: test MSE {r.test_mse:.5f}, "
                      f"kNN {r.knn_accuracy:.3f}, {r.epochs} epochs, {r.seconds:.1f} s", flush=True)
    pca = {latent: pca_reference(latent, data) for latent in LATENTS}
    pixels = knn_accuracy(data[0], data[1], data[2], data[3])
    text = markdown(runs, pca, pixels, data)
    (args.out / "digits_study.md").write_text(text, encoding="utf-8")
    plots(runs, pca, data[3], args.out / "digits")
    print(text)
    print(f"{len(runs)} models in {time.perf_counter() - started:.0f} s; written to {args.out}/digits_study.md")


if __name__ == "__main__":
    main()
