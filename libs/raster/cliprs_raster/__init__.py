"""CLIP-RS rasters: scenes read through rio-tiler and rendered as XYZ tiles (`cliprs_raster.render`),
and the sample scenes the demo, the tests and the benchmarks use (`cliprs_raster.samples`)."""
