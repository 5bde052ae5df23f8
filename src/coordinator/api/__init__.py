"""The gRPC edge: servicers, the protobuf <-> domain conversions and the error mapping."""
