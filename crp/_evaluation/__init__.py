"""Implementation of :mod:`crp.evaluation`: metrics, perturbations, orders, scores, curves."""
