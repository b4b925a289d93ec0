"""The capture workload (``retina-otel capture run``): what each Capture Job executes on its node.

tcpdump with the filter translated from the Capture, a metadata bundle, a tarball named
``<capture>-<node>-<YYYYMMDDhhmmss>UTC.tar.gz``, copied to hostPath, PVC, Azure Blob and S3.
See docs/capture.md.
"""

from __future__ import annotations

from .spec import CaptureJobSpec, CaptureOutputs, S3Output, SpecError

__all__ = ["CaptureJobSpec", "CaptureOutputs", "S3Output", "SpecError"]
