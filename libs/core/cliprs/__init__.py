"""CLIP-RS shared package: what every service imports and no service copies."""
