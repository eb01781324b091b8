"""Cross-cutting request handling: who is asking (auth.py), rate limits (limits.py), errors
(errors.py), metrics (metrics.py)."""
