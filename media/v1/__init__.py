"""Generated protobuf code for media.v1 (make proto regenerates)."""
