"""The run directory: schema, atomic writes, writer lock, lifecycle, system monitor."""
