"""Reading the official CTVIS / Mask2Former releases: detectron2 configs, ``.pth`` / ``.pkl``
weights, and their conversion into our checkpoint format."""
