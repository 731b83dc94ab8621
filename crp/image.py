"""Images of heatmaps and reference samples: colour maps, receptive-field crops, grids.

The implementation lives in :mod:`crp._image.render`.
"""
from crp._image.render import get_crop_range, imgify, plot_grid, vis_img_heatmap, vis_opaque_img

__all__ = ["get_crop_range", "imgify", "plot_grid", "vis_img_heatmap", "vis_opaque_img"]
