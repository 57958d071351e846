# apeserve image: the server with the embedded default model and its APE calibration.
#
#   deploy/docker-build.sh                     # builds apeserve:latest (BuildKit, cached)
#   docker run --rm -p 50051:50051 -v apeserve-data:/data apeserve
#   docker run --rm --gpus all -p 50051:50051 -v apeserve-data:/data apeserve   # GPU host
#
# Extra arguments are server flags, e.g. `docker run ... apeserve --log_format=json`.
# deploy/docker-build.sh makes the base image from Debian's packages (debootstrap) when
# no registry is reachable, and passes it as BASE_IMAGE; with a registry, plain
# `DOCKER_BUILDKIT=1 docker build .` uses Debian's official image.
#
# The build stage runs the same deploy/setup.sh as a developer machine. The runtime
# stage keeps libtorch and the CUDA libraries of the torch wheel at the same paths,
# because the binaries' run path points there; it takes nothing else from the Python
# environment (no interpreter, no compilers, no headers).

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ENV APESERVE_HOME=/opt/apeserve DEBIAN_FRONTEND=noninteractive
WORKDIR /src
# Only what deploy/setup.sh reads, so that the set-up layer (the torch environment,
# gigabytes) is rebuilt only when the requirements, the model list or the script change.
COPY deploy/setup.sh deploy/lib.sh deploy/requirements.txt deploy/models.lock deploy/
# The caches are BuildKit cache mounts: they survive between builds without entering a
# layer. The optional secret `ca_bundle` is a CA bundle for pip (a TLS proxy's CA).
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    --mount=type=secret,id=ca_bundle \
    rm -f /etc/apt/apt.conf.d/docker-clean \
    && apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates python3 \
    && if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && ./deploy/setup.sh
COPY . .
RUN --mount=type=cache,target=/opt/apeserve/ccache \
    export CCACHE_DIR=/opt/apeserve/ccache \
    && cmake --preset default -DAPESERVE_BUILD_TESTS=OFF \
    && cmake --build --preset default -j"$(nproc)" --target apeserve apectl \
    && ccache --show-stats | grep -E "Hits|Misses" || true
# What the runtime needs, at the paths it is found at: the binaries, the model, the
# calibration, and the shared libraries of the torch wheel (libtorch, the CUDA
# runtime, cuBLAS, cuDNN...) without their headers and static archives, and without
# the libraries nothing of libtorch links (torch's Python binding, the multi-GPU
# solver, the BLAS and FFTW wrappers, the profiler's).
RUN site="$(echo /opt/apeserve/venv/lib/python3*/site-packages)" \
    && mkdir -p "/stage$site" /stage/usr/local/bin /stage/opt/apeserve \
    && cd "$site" && cp -a --parents torch/lib nvidia "/stage$site" \
    && find "/stage$site" \( -name include -o -name bin \) -type d -prune -exec rm -rf {} + \
    && find "/stage$site" \( -name '*.a' -o -name '*.py' -o -name __pycache__ \) -prune -exec rm -rf {} + \
    && cd "/stage$site" \
    && rm -f torch/lib/libtorch_python.so nvidia/cu13/lib/libcusolverMg.so.* \
       nvidia/cu13/lib/libnvblas.so.* nvidia/cu13/lib/libcufftw.so.* nvidia/cu13/lib/libnvperf_* \
       nvidia/cu13/lib/libpcsamplingutil.so nvidia/cu13/lib/libcheckpoint.so \
    && cp /src/build/default/server/apeserve /src/build/default/tools/apectl /stage/usr/local/bin/ \
    && cp -a /opt/apeserve/models /stage/opt/apeserve/ \
    && cp -a /src/deploy/calibration /stage/opt/apeserve/

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    apt-get update -qq && apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libprotobuf32 librocksdb7.8 libspdlog1.10 libfmt9 libabsl20220623 \
      libssl3 libcpp-httplib0.11 libxxhash0 libpcre2-8-0 libjemalloc2 \
    && rm -rf /usr/share/doc /usr/share/man /usr/share/locale
COPY --from=build /stage/ /
# Fails the build if a shared library is missing, rather than the first start (the
# libraries libtorch opens lazily, such as its linear algebra, included). libcuda is
# the GPU driver's: a GPU host's container runtime mounts it.
RUN ! ldd /usr/local/bin/apeserve /usr/local/bin/apectl \
      /opt/apeserve/venv/lib/python3*/site-packages/torch/lib/*.so \
      | grep "not found" | grep -v "libcuda\.so\.1 " \
    && useradd --uid 10001 --user-group --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin apeserve \
    && mkdir -p /data && chown apeserve:apeserve /data
USER apeserve
VOLUME /data
# gRPC, and the metrics endpoint (bound to loopback unless --metrics_listen says otherwise).
EXPOSE 50051 9464
# The server's own gRPC health service, asked by the image's apectl. With TLS or another
# port, set APESERVE_HEALTH_ARGS, e.g. "--server=127.0.0.1:50051 --tls --tls_ca=/tls/ca.pem".
ENV APESERVE_HEALTH_ARGS="--server=127.0.0.1:50051"
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD apectl $APESERVE_HEALTH_ARGS --timeout=4s health
STOPSIGNAL SIGTERM
ENTRYPOINT ["apeserve", "--model=/opt/apeserve/models/SmolLM2-135M-Instruct.Q4_1.gguf", \
            "--ape_calibration=/opt/apeserve/calibration/SmolLM2-135M-Instruct.Q4_1.json", \
            "--data_dir=/data", "--listen=0.0.0.0:50051"]
