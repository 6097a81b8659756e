"""Generated gRPC code of the device protocol (package fleetflow.device.v1)."""
