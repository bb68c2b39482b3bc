"""Emulations of robot hardware at its lowest reachable seam (I2C bus, camera module).
Import as `from tests.fakes.pca9685_model import ...`."""
