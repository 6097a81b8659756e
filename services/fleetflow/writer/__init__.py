"""The writer: stores a pipeline's processed records, acknowledging each message only after the commit."""
