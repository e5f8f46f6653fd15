"""Evaluation: `scoring` (pure: records, scorecards, summaries), `runner` (the one loop from a
model and items to predictions and a scorecard; a run's evaluations and samples) and `tables`
(plain-text scorecards)."""
