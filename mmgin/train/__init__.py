"""The training system: step, optimizer and schedules, post-hoc EMA, checkpoints, logging.

The `Train` and `SynthesizeEMA` programs (mmgin/programs/) compose these parts.
"""
