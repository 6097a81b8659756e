"""The stream processor: runs a Pipeline's steps over one share of a fleet's telemetry partitions."""
