"""The IVON optimizer."""
