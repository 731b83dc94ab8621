"""Images of heatmaps and reference samples: colour maps, receptive-field crops, grids.

The implementation lives in :mod:`crp._image.render`.
"""
from crp._image.render import get_crop_range, imgify, plot_grid, vis_img_heatmap, vis_opaque_img
from crp._utils.star import lazy_getattr, star_names

__all__ = ["get_crop_range", "imgify", "plot_grid", "vis_img_heatmap", "vis_opaque_img"]
# with zennit-crp 0.6, `from crp.image import *` also gave the names its module imported
__all__ += star_names(__name__)
__getattr__ = lazy_getattr(__name__)
