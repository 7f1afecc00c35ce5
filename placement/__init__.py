"""Where work runs: a MILP over node reports, its baselines, a simulator. numpy, scipy only."""
