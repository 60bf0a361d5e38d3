"""The DTE paper's protocols as DTE's code runs them: each of the 43 sets prepared by its data generator.

Run from the repository root: `.venv/bin/python bench/dte_combined.py` (semi-supervised, Table 1; writes
bench/results/quality_dte_combined.md) or `--protocol dte-unsup` (unsupervised, Table 2; writes
quality_dte_unsup_combined.md). DTE's data generator (ADBench's) bootstraps sets under 1,000 rows up to 1,000
and subsamples sets over 50,000 rows to 50,000, at random, before the split; sets in between are used whole.
This table takes each set from the run that prepared it that way:

* sets of 1,000-50,000 rows: the whole-set run (`bench/dte.py --protocol dte`, quality_dte.csv, or
  `--protocol dte-unsup`, quality_dte_unsup.csv; seed 0);
* the 18 others: the resampled run (`bench/dte.py --protocol PROTOCOL --adbench-resample --seeds 0,1,2,3,4
  --sets ...`, quality_dte_adbench.csv or quality_dte_unsup_adbench.csv), the mean over the five
  resamplings, as the paper averages five seeds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# protocol -> (whole-set CSV, resampled CSV, report, title, the paper's columns Vigil is compared with)
SOURCES = {
    "dte": ("quality_dte.csv", "quality_dte_adbench.csv", "quality_dte_combined.md", "semi-supervised",
            {"paper_dte_np": "DTE-NP", "paper_knn": "KNN", "paper_iforest": "IForest"}),
    "dte-unsup": ("quality_dte_unsup.csv", "quality_dte_unsup_adbench.csv", "quality_dte_unsup_combined.md",
                  "unsupervised", {"paper_mcd": "MCD", "paper_iforest": "IForest", "paper_knn": "KNN"}),
}
MEASURED = ["vigil_auc", "vigil_ap", "knn_auc", "knn_ap", "iforest_auc", "iforest_ap"]


def combined(protocol: str, results: Path = RESULTS) -> pd.DataFrame:
    """One row per set: the resampled run's five-seed mean for the sets DTE's generator resamples, the
    whole-set run for the others; `source` says which."""
    whole_csv, resampled_csv, _, _, paper = SOURCES[protocol]
    columns = ["n", "d", *MEASURED, *paper]
    whole = pd.read_csv(results / whole_csv).drop_duplicates("dataset", keep="last")
    resampled = pd.read_csv(results / resampled_csv)
    means = resampled.groupby("dataset")[columns].mean()
    means["source"] = "resampled, " + resampled.groupby("dataset")["seed"].nunique().astype(str) + " seeds"
    kept = whole[~whole["dataset"].isin(means.index)].set_index("dataset")[columns]
    kept["source"] = "whole, seed 0"
    return pd.concat([kept, means]).rename_axis("dataset").sort_values(["n", "dataset"])


def report(protocol: str, table: pd.DataFrame) -> str:
    _, _, _, title, paper = SOURCES[protocol]
    means = table[[*MEASURED, *paper]].mean()
    refs = list(paper)
    lines = [
        f"# DTE {title} protocol, each set prepared as DTE's code prepares it",
        "",
        f"Command: `.venv/bin/python bench/dte_combined.py --protocol {protocol}` (from "
        f"`{SOURCES[protocol][0]}` and `{SOURCES[protocol][1]}`; see the module's docstring).",
        "",
        f"| method | mean AUC-ROC, {len(table)} sets | mean AP, {len(table)} sets |",
        "|---|---:|---:|",
        f"| Vigil (defaults, as `vigil evaluate`) | **{means['vigil_auc']:.4f}** | **{means['vigil_ap']:.4f}** |",
        f"| kNN, same runs | {means['knn_auc']:.4f} | {means['knn_ap']:.4f} |",
        f"| IsolationForest, same runs | {means['iforest_auc']:.4f} | {means['iforest_ap']:.4f} |",
        *[f"| {paper[ref]} (paper) | {means[ref]:.4f} | |" for ref in refs],
        "",
    ]
    for ref in refs:
        wins = int((table["vigil_auc"].round(4) > table[ref]).sum())
        losses = table.index[table["vigil_auc"].round(4) < table[ref]].tolist()
        lines.append(f"Vigil above the paper's {paper[ref]} on {wins} of {len(table)} sets; below it on "
                     f"{len(losses)}: " + ", ".join(losses) + ".")
        lines.append("")
    lines += [
        "| set | n | d | prepared | Vigil AUC | Vigil AP | kNN AUC | kNN AP | IForest AUC | "
        + " | ".join(f"{paper[ref]} (paper)" for ref in refs) + " |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|" + "---:|" * len(refs),
    ]
    for name, row in table.iterrows():
        lines.append(f"| {name} | {int(row['n'])} | {int(row['d'])} | {row['source']} | {row['vigil_auc']:.4f} | "
                     f"{row['vigil_ap']:.4f} | {row['knn_auc']:.4f} | {row['knn_ap']:.4f} | "
                     f"{row['iforest_auc']:.4f} | " + " | ".join(f"{row[ref]:.4f}" for ref in refs) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=list(SOURCES), default="dte")
    args = parser.parse_args(argv)
    table = combined(args.protocol)
    if len(table) != 43:
        print(f"expected 43 sets, got {len(table)}", file=sys.stderr)
        return 1
    text = report(args.protocol, table)
    (RESULTS / SOURCES[args.protocol][2]).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
