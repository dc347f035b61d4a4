"""Class activation maps of ensembles: heatmaps, boxes, overlays and a localisation score."""
