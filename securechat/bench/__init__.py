"""``securechat-bench``: load generator and measurements for the relay (docs/benchmarks.rst)."""
