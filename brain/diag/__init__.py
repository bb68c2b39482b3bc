"""On-device diagnostics: `brain health`, `brain validate-hardware`, `brain diag bundle`."""
