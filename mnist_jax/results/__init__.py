"""Results: what a finished run is read as.

  report.py    report.md, its figures and CSVs, the members' section
  plots.py     the figures (matplotlib's Agg backend, files only)
  run.py       a finished run loaded back: `--mode=report`, `--mode=predict`,
               and the Python API's `Run`
  analysis.py  what the model learned: reading, robustness, attributions,
               features, calibration (analysis_plots.py draws them)

Import the modules themselves (`from mnist_jax.results import report`); this
package imports none of them, so matplotlib loads only when a figure is drawn.
"""
