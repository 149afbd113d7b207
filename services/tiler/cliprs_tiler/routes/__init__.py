"""The tiler's routers: health, map tiles and window pixels, plans and job progress. Handlers
parse the request, call `cliprs_tiler.service` and return its model (or image bytes)."""
