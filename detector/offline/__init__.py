"""Offline work on a detector's data: score a file, evaluate on labelled data, tune, report."""
