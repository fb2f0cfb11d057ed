"""Shared test helpers: real sandboxd processes on free loopback ports."""
