"""Parsers of /proc/PID files, returning dataclasses. Each reader takes a pid (or tid)."""
