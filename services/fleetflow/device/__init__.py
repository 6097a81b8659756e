"""The Python device client: what a device (or the simulator) uses to talk to a fleetflow gateway."""
