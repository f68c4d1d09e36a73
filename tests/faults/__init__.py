"""Fault injection: hostile inputs, degenerate data, killed jobs, untrusted files (issue 9)."""
