"""Boxes that live: detached runs, each watched by a monitor of its own (monitor.py), their state (state.py), and
the commands that start them (detach.py); `sbx ps`, `logs`, `stop`, `start` and `rm` are in cli/boxes.py."""
