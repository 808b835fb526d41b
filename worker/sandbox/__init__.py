"""Running untrusted job code: the bubblewrap sandbox with its limits, and the cgroups behind them."""
