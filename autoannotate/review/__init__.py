"""Review an existing YOLO-seg dataset: read labels with their images, check them, preview them."""
