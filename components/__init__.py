"""Thin KFP components: interface, docstring (shown in the Vertex UI), image, one call into petqlora.steps."""
