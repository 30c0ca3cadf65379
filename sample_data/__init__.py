"""Small shippable sample images with labels (see README.md here for sources and licences)."""
