"""Examples that live outside qfleet's own packages (importable when run from the repository root)."""
