"""Tests of the loopback Discord (fakediscord/, a development package at the top of the tree)."""
