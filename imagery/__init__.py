"""sitewatch runtime: read scenes, tile them, run the detector, georeference, merge, export."""
