"""Local mode: the same DeviceFleet and Pipeline YAML run on one machine, without Kubernetes."""
