"""raygal: calibrated posteriors of galaxy properties from survey images and ugriz photometry,
at survey scale, on Ray."""
__version__ = "0.1.0"
