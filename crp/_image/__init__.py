"""Drawing heatmaps and reference images."""
