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

if __package__ in (None, ""):                 # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dte import OUTPUTS, PAPER_COLUMNS, PAPER_FIELDS, PROTOCOLS, TITLES

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MEASURED = ["vigil_auc", "vigil_ap", "knn_auc", "knn_ap", "iforest_auc", "iforest_ap"]


def files(protocol: str) -> tuple[str, str, str]:
    """(whole-set CSV, resampled CSV, report) of `protocol`, named after bench/dte.py's report."""
    stem = Path(OUTPUTS[protocol]).stem
    return f"{stem}.csv", f"{stem}_adbench.csv", f"{stem}_combined.md"


def paper_columns(protocol: str) -> dict[str, str]:
    """The CSV column of each of the paper's methods Vigil is shown against, and the method's name."""
    return {PAPER_FIELDS[method]: method for method in PAPER_COLUMNS[protocol]}


def combined(protocol: str, results: Path = RESULTS) -> pd.DataFrame:
    """One row per set: the resampled run's five-seed mean for the sets DTE's generator resamples, the
    whole-set run for the others; `source` says which."""
    whole_csv, resampled_csv, _ = files(protocol)
    paper = paper_columns(protocol)
    columns = ["n", "d", *MEASURED, *paper]
    whole = pd.read_csv(results / whole_csv).drop_duplicates("dataset", keep="last")
    resampled = pd.read_csv(results / resampled_csv)
    means = resampled.groupby("dataset")[columns].mean()
    means["source"] = "resampled, " + resampled.groupby("dataset")["seed"].nunique().astype(str) + " seeds"
    kept = whole[~whole["dataset"].isin(means.index)].set_index("dataset")[columns]
    kept["source"] = "whole, seed 0"
    return pd.concat([kept, means]).rename_axis("dataset").sort_values(["n", "dataset"])


def report(protocol: str, table: pd.DataFrame) -> str:
    whole_csv, resampled_csv, _ = files(protocol)
    paper = paper_columns(protocol)
    means = table[[*MEASURED, *paper]].mean()
    refs = list(paper)
    lines = [
        f"# DTE {TITLES[protocol]} protocol, each set prepared as DTE's code prepares it",
        "",
        f"Command: `.venv/bin/python bench/dte_combined.py --protocol {protocol}` (from "
        f"`{whole_csv}` and `{resampled_csv}`; see the module's docstring).",
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
    parser.add_argument("--protocol", choices=PROTOCOLS, default="dte")
    args = parser.parse_args(argv)
    table = combined(args.protocol)
    if len(table) != 43:
        print(f"expected 43 sets, got {len(table)}", file=sys.stderr)
        return 1
    text = report(args.protocol, table)
    (RESULTS / files(args.protocol)[2]).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
