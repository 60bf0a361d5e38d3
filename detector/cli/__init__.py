"""The `vigil` command line: one module per command group; `detector.cli.main` is the entry point."""
