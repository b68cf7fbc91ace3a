"""Tests of facesmith.train (a package, so its conftest never shadows the others)."""
