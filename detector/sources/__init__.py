"""Record sources feeding the detector (log tails, metric scrapes, the built-in demo)."""
