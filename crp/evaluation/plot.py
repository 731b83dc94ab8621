"""Plots of faithfulness results: score curves, per-sample curves, pixels per step, perturbed inputs.

matplotlib is imported inside each function, when a plot is drawn.
"""
from crp._evaluation.plot import plot_curves, plot_perturbed_strip, plot_pixels_per_step, plot_sample_curves

__all__ = ["plot_curves", "plot_sample_curves", "plot_pixels_per_step", "plot_perturbed_strip"]
