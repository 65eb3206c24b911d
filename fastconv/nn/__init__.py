"""Layers with explicit forward and backward, built only on fastconv.functional."""
from .module import Module, Parameter

__all__ = ["Module", "Parameter"]
