"""Hubble's Observer API as retina-otel speaks it: the ``.proto`` files, their generated message
modules (``flow_pb2``, ``observer_pb2``, ``retina_pb2``) and the gRPC method table (:mod:`.api`)."""
