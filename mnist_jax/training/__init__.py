"""Training, the research core (docs/design.md's map). Import the modules
themselves; this package imports none."""
