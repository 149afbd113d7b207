"""CLIP-RS tiler: fetches, caches and renders raster tiles."""
