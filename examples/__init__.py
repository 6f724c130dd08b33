"""Examples that live outside qfleet's own packages (importable when run from the repository root): ``my_policy``
(a policy and a router), ``my_scheduler`` (a batch scheduler)."""
