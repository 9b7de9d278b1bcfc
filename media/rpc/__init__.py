"""The gRPC edge: the MediaService servicer, interceptors, protobuf conversion."""
