"""The run folder: what a run writes, and reads back when it resumes (its
modules: docs/design.md's map). Import the modules themselves; this package
imports none of them, so orbax loads only when a checkpoint is used."""
