"""The ``otlp`` (gRPC) and ``otlphttp`` (HTTP/protobuf) exporters: metrics and flow logs over OTLP."""

from retina_otel.exporters.otlp.exporter import FACTORY, HTTP_FACTORY, OtlpConfig, OtlpExporter

__all__ = ["FACTORY", "HTTP_FACTORY", "OtlpConfig", "OtlpExporter"]
