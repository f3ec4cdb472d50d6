"""Reports over run directories: blocks, one section module per run kind, findings, compare."""
