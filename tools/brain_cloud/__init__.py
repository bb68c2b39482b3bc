"""brain-cloud: the cloud-side companion of the brain robot runtime (docs/cloud.md)."""

__version__ = "0.1.0"
