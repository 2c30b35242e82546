"""pytest plugin shipped with edgecomp: fixtures for backend plugin authors (see edgecomp.testing)."""
