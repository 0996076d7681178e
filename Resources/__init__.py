"""Resources shipped with MLVIRNET (bundled data, model weights, Slicer UI and icons)."""
