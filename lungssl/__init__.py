"""lungssl: label-free lung segmentation of chest X-rays."""
__version__ = "0.1.0"
