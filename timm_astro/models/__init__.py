"""Model definitions; importing this package registers them with timm."""
