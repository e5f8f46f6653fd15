"""Evaluation: `scoring` (pure: records, scorecards, tables), `runner` (the one loop)."""
