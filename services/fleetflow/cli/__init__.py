"""The `fleetflow` command."""
