"""A box: its plan, the C starter that builds it and is its init, the C spawner that starts its runs.

`plan.py` makes the steps from a `layout.Layout` (what the caller asked
for); `starter.c` carries them out and serves file copies and resets
(`files.py` is the supervisor's side); `spawner.c` runs each program, and
`run_protocol.py` is its request and report, typed; `supervisor.py` is the
`Box` the API holds; `userns.py` and `cgroups.py` are its ids and its
cgroups.  The messages between them are `protocol.py`'s.
"""
