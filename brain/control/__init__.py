"""The control loop, its modes and safety, and policy inference.

Imports no HTTP, torch or SQLite.
"""
