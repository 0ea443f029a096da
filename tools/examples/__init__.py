"""Example models bundled with edgec (used by ``edgec demo`` and the README)."""
