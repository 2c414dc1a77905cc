"""Nodes: the workers that run jobs of the kinds they register."""
