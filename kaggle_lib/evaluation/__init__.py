"""Evaluation: `scoring` (pure), `runner` (the one loop, a run's evaluations), `tables`."""
