"""Differentiable camera physics (bottom layer): imports only torch / numpy / scipy / kornia / yaml."""
