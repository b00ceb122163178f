"""Results: what a finished run is read as (report, predict, analyses, serve).
Import the modules themselves (`from mnist_jax.results import report`): this
package imports none, so matplotlib loads only when a figure is drawn."""
