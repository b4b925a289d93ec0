# syntax=docker/dockerfile:1
# One image for the retina-otel agent, the operator and the capture workload, for linux/amd64 and
# linux/arm64 (docs/image.md, "Architectures"):
#   docker build -t retina-otel:dev .                                   # the build machine's architecture
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/retina-otel:<tag> --push .
#   agent:    docker run --privileged --network host -v /lib/modules:/lib/modules:ro -v /usr/src:/usr/src:ro \
#                 -v /sys/kernel/tracing:/sys/kernel/tracing -v /sys/fs/bpf:/sys/fs/bpf retina-otel:dev agent
#   operator: retina-otel operator
# Kernel headers are NOT in the image: bcc compiles against the node's headers, mounted from the host
# (docs/image.md).

ARG DEBIAN_RELEASE=bookworm

# --- build: a wheel of the package from source -------------------------------------------------------
# Built on the target platform (buildx's default for a FROM without --platform; emulated when it is not
# the build machine's): `pip wheel` also collects the dependencies' binary wheels (numpy, pydantic-core,
# grpcio), which must be the target's.
FROM debian:${DEBIAN_RELEASE}-slim AS build
ARG TARGETARCH
RUN case "${TARGETARCH:-$(dpkg --print-architecture)}" in \
      amd64|arm64) ;; \
      *) echo "retina-otel supports linux/amd64 and linux/arm64, not ${TARGETARCH}" >&2; exit 1 ;; \
    esac
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY retina_otel ./retina_otel
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --upgrade pip wheel \
    && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels ".[all]"

# --- runtime ----------------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
LABEL org.opencontainers.image.title="retina-otel" \
      org.opencontainers.image.description="OpenTelemetry-native Kubernetes network observability with eBPF" \
      org.opencontainers.image.licenses="MIT"
# bcc (python3-bpfcc + libbpfcc, which bundles its LLVM/clang), libatomic1 (the ring-buffer reader's
# acquire/release ordering, needed on arm64), the capture workload's tools, and what the capture metadata
# bundle runs (ip, nft, iptables, ss, ethtool). Debian builds all of them for amd64 and arm64.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-venv ca-certificates \
       python3-bpfcc bpfcc-tools libbpfcc libatomic1 \
       tcpdump iproute2 nftables iptables ethtool procps kmod \
    && rm -rf /var/lib/apt/lists/*
# The venv sees only Debian's bcc module (as scripts/setup.sh does), not every Debian package.
COPY --from=build /wheels /wheels
RUN python3 -m venv /opt/retina-otel \
    && mkdir -p /usr/lib/python3/dist-packages/retina-otel-bcc \
    && ln -s /usr/lib/python3/dist-packages/bcc /usr/lib/python3/dist-packages/retina-otel-bcc/bcc \
    && echo /usr/lib/python3/dist-packages/retina-otel-bcc \
       > "$(/opt/retina-otel/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/debian-bcc.pth" \
    && /opt/retina-otel/bin/pip install --no-cache-dir --no-index --find-links /wheels "retina-otel[all]" \
    && rm -rf /wheels \
    && /opt/retina-otel/bin/python -c "import bcc, kopf, boto3, azure.storage.blob, retina_otel.cli" \
    && ln -s /opt/retina-otel/bin/kubectl-retina /usr/local/bin/kubectl-retina
ENV PATH=/opt/retina-otel/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The agent runs as root with the capabilities the chart grants; the operator's pod overrides the user.
EXPOSE 10093 18081
ENTRYPOINT ["retina-otel"]
CMD ["agent"]
