"""aygolog: distributed log management for Python."""
