"""`fleetflow bench`: the local platform under generated device load, next to the raw JetStream transport."""
