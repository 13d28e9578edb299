"""Training objectives as pure functions of log-probabilities (no model, no data)."""
