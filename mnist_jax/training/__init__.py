"""Training, the research core: train.py (the state, steps and loop),
optim.py, metrics.py, members.py (--num_seeds, --sweep) and devices.py
(--parallel). Import the modules themselves; this package imports none.
"""
