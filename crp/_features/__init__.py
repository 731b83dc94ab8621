"""The feature-visualization engine: run loop, top-k state, result store, image cache, result readers."""
