"""A run: its limits, its input and output, how its end becomes a verdict and a record.

`limits.py` (what a run may use), `rlimits.py` and `runtime_env.py` (what the
program is given), `fallback.py` (how limits hold without cgroup v2),
`output.py` and `tap.py` (input as sealed files, output captured or relayed
within one limit), `verdict.py` and `result.py` (the record).
"""
